"""The portal's domain: organisations, users, sign-in, sessions, consent, stored profiles, audit and keys.

Modules import one way (errors, policy, audit at the bottom; signin, consent, keys at the top) and know no web
request: callers pass the actor, the client address and a mapping for the browser's pending state.
"""
