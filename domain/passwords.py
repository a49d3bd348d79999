"""Password accounts: the password rules, creating an account, setting a new password, and password sign-in."""
from __future__ import annotations

import logging

from flask import current_app
from werkzeug.security import check_password_hash, generate_password_hash

import throttles
from domain.addresses import normalise_email
from domain.audit import record
from domain.directory import get_organization, organization_for_domain, set_email, users_by_email
from domain.errors import InvalidInput, SignInFailed, Throttled
from domain.members import blocked_refusal
from domain.policy import Actor, require_admin
from domain.profiles import scrub_deleted
from domain.races import commit_or_conflict
from domain.sessions import State, start_session
from domain.throttling import account_key, address_key
from models import LoginSession, Organization, StoredProfile, User, db, utcnow

log = logging.getLogger(__name__)

MIN_PASSWORD = 12
MAX_PASSWORD = 1024  # what the sign-in form accepts
# Verifies the password of an unknown user, so both cases take the same time: a hash in generate_password_hash's
# format and cost (scrypt, n=2**15) of a random password nobody kept. A constant, because computing it at import
# raised every worker's peak memory by about 30 MB (scrypt's work area) before it served anything.
_DUMMY_HASH = ("scrypt:32768:8:1$Krv9Vwi6bRviSM6e$7c4b4652e919168c35fa4ba1e4854d4a4fb5a8a53d8266510acc46ba85e26c888c"
               "7b382a566ce0bb54fdbe4f6ece6fb30bb04c3d433bed69ba02ebdc6a895a27")


def check_password(password: str, email: str) -> None:
    """Refuse a password NIST SP 800-63B says to refuse: short, one repeated character, the email in it, or one
    that is common or breached (zxcvbn's list of 30,000 from breaches, and its patterns on top of such words)."""
    if len(password or "") < MIN_PASSWORD:
        raise InvalidInput(f"A password needs at least {MIN_PASSWORD} characters.")
    if len(password) > MAX_PASSWORD:
        raise InvalidInput(f"A password has at most {MAX_PASSWORD} characters (the sign-in form takes no more).")
    if len(set(password)) == 1:
        raise InvalidInput("That password is one character repeated: choose one that is harder to guess.")
    folded, local = password.casefold(), email.partition("@")[0]
    if email in folded or (len(local) >= 4 and local in folded):
        raise InvalidInput("That password contains the email address: choose one that does not.")
    from zxcvbn import zxcvbn  # here, not at the top: its word lists are 12 MB a web worker needs only for this
    # zxcvbn reads at most 72 characters; a long password is judged by its start.
    found = zxcvbn(password[:72], user_inputs=[email, local])
    if found["score"] < 3:
        why = found["feedback"]["warning"] or "It is close to a password found in lists of common or breached ones."
        raise InvalidInput(f"That password is too easy to guess. {why.rstrip('.')}. A few unrelated words make "
                           "a strong one.")


def create_local_user(email: str, org_name: str, password: str, *, role: str = "admin",
                      break_glass: bool = False, actor: Actor = None) -> User:
    """Create a password account in an organisation whose domains include the email's (audited when an actor
    is given)."""
    email = normalise_email(email)
    org = get_organization(org_name)
    if actor is not None:
        require_admin(actor, org, "creating an account")
    if email.rpartition("@")[2] not in {d.name for d in org.domains}:
        raise InvalidInput(f"{email.rpartition('@')[2]} is not one of the domains of {org.name}.")
    check_password(password, email)
    if users_by_email(email):
        raise InvalidInput("A user with that email exists already.")
    user = User(organization=org, role=role, password_hash=generate_password_hash(password), break_glass=break_glass)
    set_email(user, email)
    if actor is not None:
        record("user_created", "success", org=org, actor=actor,
               detail=f"user {user.id} {role}" + (" break-glass" if break_glass else "") + " password")
    commit_or_conflict("A user with that email exists already.")
    return user


def set_password(raw_email: str, password: str, actor: Actor) -> tuple[User, int]:
    """Give a password account a new password and end all its sessions; return the user and sessions ended."""
    email = normalise_email(raw_email)
    user = next((u for u in users_by_email(email) if u.password_hash), None)
    if user is None:
        if users_by_email(email):
            raise InvalidInput(f"{email} signs in with Microsoft only: it has no password to reset.")
        raise InvalidInput(f"No account has the email {email}.")
    require_admin(actor, user.organization, "setting a password")
    check_password(password, email)
    user.password_hash = generate_password_hash(password)
    sessions = db.select(LoginSession.id).where(LoginSession.user_id == user.id)
    db.session.execute(db.delete(StoredProfile).where(StoredProfile.kept.is_(False),
                                                      StoredProfile.session_id.in_(sessions)),
                       execution_options={"synchronize_session": False})
    ended = db.session.execute(db.delete(LoginSession).where(LoginSession.user_id == user.id),
                               execution_options={"synchronize_session": False}).rowcount or 0
    record("password_reset", "success", org=user.organization, actor=actor,
           detail=f"user {user.id} sessions_ended={ended}")
    db.session.commit()
    scrub_deleted()
    return user, ended


def _requires_sso(org: Organization | None) -> bool:
    return org is not None and org.sso_active and org.require_sso


def password_sign_in(raw_email: str, password: str, *, client: str | None, state: State) -> User:
    """Check a password and start a session in `state`; unknown users and wrong passwords fail alike, and SSO
    enforcement applies.

    Each check counts against the (account, client address) pair first and a success forgets the pair's count,
    so only failed checks add up, and only for the client that made them: strangers cannot lock the owner out.
    """
    email = normalise_email(raw_email)
    pair = ("password-check", account_key(email), address_key(client))
    limit = current_app.config["RATELIMIT_SIGN_IN_PER_ACCOUNT"]
    retry_after = throttles.hit(limit, *pair)
    if retry_after:
        log.warning("Password checks refused: too many failures for one account from one client")
        raise Throttled(retry_after)
    candidates = [u for u in users_by_email(email) if u.password_hash]
    user = candidates[0] if candidates else None
    ok = check_password_hash(user.password_hash if user else _DUMMY_HASH, password or "") and user is not None
    # Where the email's organisation requires SSO, every answer but a break-glass account's success is the same
    # refusal, so a wrong and a right password (or no account at all) look alike.
    enforced = organization_for_domain(email.rpartition("@")[2])
    if ok and _requires_sso(user.organization):
        enforced = user.organization
    if not ok or (_requires_sso(enforced) and not user.break_glass):
        record("sign_in", "failure", org=user.organization if user else None, actor=user,
               detail="sso_required" if ok else "bad_password")
        db.session.commit()
        if _requires_sso(enforced):
            raise SignInFailed(f"{enforced.name} requires single sign-on. Sign in with Microsoft instead.", status=403)
        raise SignInFailed("The email or password is not right.")
    throttles.clear(limit, *pair)
    org = user.organization
    if user.blocked:
        record("sign_in", "failure", org=org, actor=user, detail="blocked")
        db.session.commit()
        raise blocked_refusal(org)
    user.last_sign_in_at = utcnow()
    record("sign_in", "success", org=org, actor=user, detail="password")
    start_session(user, "password", state)
    db.session.commit()
    return user
