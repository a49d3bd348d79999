# The portal's settings: copy this file to instance/config.py and uncomment what you set.
# Layers: these defaults -> instance/config.py -> FLASK_<KEY> environment variables (parsed as JSON where they can be).
# Booleans must be real ones: True/False here, true/false or 1/0 in the environment ("False", "no", "off" stop start-up).
# `flask --app app check-config` lists every problem at once and prints the URLs to register at Microsoft.

# -- required outside demo mode --------------------------------------------------------------------------------
# Signs the session cookie: at least 32 random characters, e.g. python -c "import secrets; print(secrets.token_urlsafe(48))".
# SECRET_KEY = None
# The portal's public host name (and port, if not 443); the redirect URIs sent to Microsoft are built from it.
# SERVER_NAME = None
# The app registration in Microsoft Entra ID (Application (client) ID and a client secret's value).
# ENTRA_CLIENT_ID = None
# ENTRA_CLIENT_SECRET = None
# Keys for personal data at rest, newest first: `flask --app app generate-key` makes one. Keep older keys until
# `flask --app app rotate-keys` has moved all data to the newest.
# ENCRYPTION_KEYS = None
# Instead of ENCRYPTION_KEYS: a file (relative to instance/, mode 0600) with one key a line, newest first.
# ENCRYPTION_KEY_FILE = None

# -- Microsoft -------------------------------------------------------------------------------------------------
# Where users sign in: the multi-tenant endpoint, or https://login.microsoftonline.com/<tenant id> for one tenant.
# ENTRA_AUTHORITY = "https://login.microsoftonline.com/organizations"
# GRAPH_ENDPOINT = "https://graph.microsoft.com/v1.0"
# Seconds for every outbound call to Microsoft.
# ENTRA_TIMEOUT = 10.0
# A PEM file of CA certificates to trust for the outbound calls instead of the system's (e.g. a staging emulator
# started with `python -m emulator` and a private CA). Never a way to switch verification off.
# ENTRA_CA_BUNDLE = None
# Outbound calls read proxy settings from the environment (HTTPS_PROXY, NO_PROXY); False where none is needed.
# ENTRA_TRUST_ENV = True

# -- database --------------------------------------------------------------------------------------------------
# None: SQLite in instance/portal.sqlite (one server). Several workers or hosts: PostgreSQL through psycopg 3, e.g.
# "postgresql+psycopg://portal:PASSWORD@db.internal/portal". Run `flask --app app db upgrade` before starting.
# SQLALCHEMY_DATABASE_URI = None

# -- web -------------------------------------------------------------------------------------------------------
# Host header values to serve; any other host gets a plain 400. Recommended in production.
# TRUSTED_HOSTS = ["portal.example.com"]
# Scheme of the redirect URIs (demo mode uses http).
# PREFERRED_URL_SCHEME = "https"
# Behind a reverse proxy: how many proxies in front set X-Forwarded-For / X-Forwarded-Proto (0 trusts none).
# PROXY_FIX_X_FOR = 0
# PROXY_FIX_X_PROTO = 0
# Largest request body in bytes.
# MAX_CONTENT_LENGTH = 65536
# Flask's debug mode: tracebacks in the browser. Never in production; it relaxes no security setting.
# DEBUG = False

# -- sessions --------------------------------------------------------------------------------------------------
# Idle timeout and absolute lifetime of a sign-in.
# SESSION_IDLE_MINUTES = 30
# SESSION_MAX_HOURS = 8
# How often (seconds) a worker's sign-ins sweep expired sessions and their copies (0: at every sign-in).
# SESSION_SWEEP_SECONDS = 60
# Outside demo mode the cookie is always Secure and named __Host-portal_session; these stay as they are.
# SESSION_COOKIE_HTTPONLY = True
# SESSION_COOKIE_SAMESITE = "Lax"
# SESSION_REFRESH_EACH_REQUEST = False
# CSRF tokens live as long as the session.
# WTF_CSRF_TIME_LIMIT = None

# -- sign-in throttles (Flask-Limiter) -------------------------------------------------------------------------
# RATELIMIT_ENABLED = True
# Requests per client (IPv4 address or IPv6 /64) to the login prompt, password step, Continue to Microsoft and
# callbacks together: generous, since a whole company may sign in from behind one NAT.
# RATELIMIT_SIGN_IN_PER_IP = "1000 per minute; 10000 per hour"
# Password steps per client.
# RATELIMIT_PASSWORD_PER_IP = "60 per minute; 600 per hour"
# Failed password checks per account and client; beyond it that client is blocked for that account (429).
# RATELIMIT_SIGN_IN_PER_ACCOUNT = "10 per minute; 100 per hour"
# Where the counters live: the portal's database (every worker counts together), memory:// or redis://host:6379.
# RATELIMIT_STORAGE_URI = "portal-database://"
# The database counters support only the moving window.
# RATELIMIT_STRATEGY = "moving-window"
# X-RateLimit-* headers on the sign-in endpoints.
# RATELIMIT_HEADERS_ENABLED = True

# -- user provisioning (SCIM) ----------------------------------------------------------------------------------
# Requests per bearer token to /scim/v2/ (Entra's provisioning service); more get a SCIM 429 with Retry-After.
# RATELIMIT_SCIM = "6000 per minute"
# Largest request body /scim/v2/ accepts (a PATCH may add hundreds of group members at once).
# SCIM_MAX_CONTENT_LENGTH = 1048576

# -- demo ------------------------------------------------------------------------------------------------------
# Use the built-in Entra ID emulator instead of Microsoft (refused together with ENTRA_CLIENT_ID/SECRET). A demo
# portal answers only requests from this computer.
# DEMO_MODE = False

# -- the portal's own name and links ---------------------------------------------------------------------------
# Shown in the header, page titles and the consent explanation.
# PORTAL_NAME = "Customer Portal"
# A logo: a file name in the instance folder (.png, .svg, .jpg, .jpeg, .webp), served at /logo.
# PORTAL_LOGO = None
# Shown in a footer on every page; the consent explanation links the privacy notice. https:// (or mailto: for support).
# SUPPORT_URL = None
# PRIVACY_URL = None
