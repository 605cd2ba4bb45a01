"""Goldleaves settings: every value comes from the environment (django-environ).

`.env.example` lists every key with a comment. A `.env` file beside `manage.py`
(or the file named by the environment variable `GOLDLEAVES_ENV_FILE`) is read if
present; real environment variables win over it.
"""

import json
from datetime import timedelta
from pathlib import Path

import environ
from django.core.exceptions import ImproperlyConfigured

from core.db_pool import reset_pooled_connection

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()
# GOLDLEAVES_ENV_FILE: another env file (tests point it at a missing one to see the defaults).
ENV_FILE = Path(env.str("GOLDLEAVES_ENV_FILE", default="") or BASE_DIR / ".env")
environ.Env.read_env(ENV_FILE, overwrite=False)

DEBUG = env.bool("DEBUG", default=False)
SECRET_KEY = env.str("SECRET_KEY", default="")
if not SECRET_KEY:
    if DEBUG:
        SECRET_KEY = "dev-insecure-secret-key-only-for-debug"
    else:
        raise ImproperlyConfigured(
            "SECRET_KEY is not set and DEBUG is false. Set SECRET_KEY in the environment "
            "or in .env (see .env.example), or set DEBUG=true for local development."
        )
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]", "testserver"])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework_simplejwt.token_blacklist",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",  # Swagger UI and Redoc as local static files (no CDN)
    # procrastinate (task queue on PostgreSQL): its tables (migrations), models, read-only
    # admin and ``manage.py procrastinate worker``; before our apps, whose ``tasks``
    # modules it discovers.
    "procrastinate.contrib.django",
    "tenancy",
    "billing",
    "cases",
]

# Order matters and is asserted by a test: request id -> timer -> session/auth -> tenant ->
# rate limit -> idempotency -> usage. Request id and timer come first, so every response
# (SecurityMiddleware's redirects too) carries X-Request-ID and Server-Timing. The rate limit
# counts every tenant request (replays and unrouted paths too); an Idempotency-Key replay is
# answered before the usage middleware, so it is never billed again.
MIDDLEWARE = [
    "core.middleware.RequestIdMiddleware",
    "core.middleware.RequestTimerMiddleware",
    "core.errors.ApiJsonErrorMiddleware",
    "core.errors.LengthRequiredMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "tenancy.middleware.TenantMiddleware",
    "tenancy.middleware.AdminCrossTenantMiddleware",
    "tenancy.ratelimit.RateLimitMiddleware",
    "billing.stripe_sync.entitlement.EntitlementMiddleware",
    "billing.idempotency.middleware.IdempotencyMiddleware",
    "billing.middleware.UsageMiddleware",
]

ROOT_URLCONF = "goldleaves.urls"
# A CSRF refusal under /api/ is the API's JSON 403 (core.errors); the admin keeps Django's.
CSRF_FAILURE_VIEW = "core.errors.csrf_failure"
WSGI_APPLICATION = "goldleaves.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        # Project-level overrides (the admin index, drf-spectacular's Redoc page).
        "DIRS": [BASE_DIR / "goldleaves" / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- Database -------------------------------------------------------------
# With DATABASE_URL: that PostgreSQL. Without it: an embedded PostgreSQL (pgserver)
# whose data lives under .data/ (see goldleaves/embedded_db.py), with both logins.
# Two logins (DATABASE_OWNER_URL set): DATABASE_URL logs in as the app role itself and
# DATABASE_OWNER_URL as the owner (migrate, flush, the test database), always to
# DATABASE_URL's database. One login (DATABASE_OWNER_URL unset, development only):
# DATABASE_URL is the owner and connections SET ROLE to DATABASE_APP_ROLE.
# See tenancy/rls/roles.py and DEPLOY.md ("Database roles").
DATABASE_APP_ROLE = env.str("DATABASE_APP_ROLE", default="goldleaves_app")
DATABASE_OWNER_URL = env.str("DATABASE_OWNER_URL", default="")
if env.str("DATABASE_URL", default=""):
    DATABASES = {"default": env.db_url("DATABASE_URL")}
else:
    from goldleaves.embedded_db import embedded_database_url

    EMBEDDED_DB_DIR = env.str("EMBEDDED_DB_DIR", default="") or str(BASE_DIR / ".data")
    # The embedded server's own superuser is the owner (DATABASE_OWNER_URL is not read);
    # the app role logs in as itself (trust on the server's Unix socket).
    DATABASE_OWNER_URL = embedded_database_url(EMBEDDED_DB_DIR, app_login=DATABASE_APP_ROLE)
    DATABASES = {"default": env.db_url_config(DATABASE_OWNER_URL)}
    if DATABASE_APP_ROLE:
        DATABASES["default"]["USER"] = DATABASE_APP_ROLE
    else:
        DATABASE_OWNER_URL = ""
DATABASE_OWNER = env.db_url_config(DATABASE_OWNER_URL) if DATABASE_OWNER_URL else {}
if DATABASE_OWNER:
    _app_login = DATABASES["default"]["USER"]
    if env.str("DATABASE_APP_ROLE", default=_app_login) not in (_app_login, ""):
        raise ImproperlyConfigured(
            f"DATABASE_APP_ROLE={DATABASE_APP_ROLE!r} but DATABASE_URL logs in as "
            f"{_app_login!r}: with DATABASE_OWNER_URL set, DATABASE_URL's user is the app role."
        )
    if _app_login == DATABASE_OWNER["USER"]:
        raise ImproperlyConfigured(
            "DATABASE_URL and DATABASE_OWNER_URL log in as the same role; DATABASE_URL must "
            "log in as the app role (see DEPLOY.md, 'Database roles')."
        )
    DATABASE_APP_ROLE = _app_login
DATABASES["default"]["ENGINE"] = "django.db.backends.postgresql"
DATABASES["default"]["CONN_MAX_AGE"] = env.int("CONN_MAX_AGE", default=60)
DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
# Django's psycopg pool (min_size=max_size=DATABASE_POOL_SIZE) instead of persistent
# connections; 0 = no pool. The pool resets app.* settings when a connection comes back.
DATABASE_POOL_SIZE = env.int("DATABASE_POOL_SIZE", default=0)
if DATABASE_POOL_SIZE:
    DATABASES["default"]["CONN_MAX_AGE"] = 0
    DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
        "min_size": DATABASE_POOL_SIZE,
        "max_size": DATABASE_POOL_SIZE,
        "reset": reset_pooled_connection,
    }
# Behind PgBouncer in transaction mode: no server-side cursors (see DEPLOY.md).
DATABASES["default"]["DISABLE_SERVER_SIDE_CURSORS"] = env.bool(
    "DISABLE_SERVER_SIDE_CURSORS", default=False
)
DATABASES["default"].setdefault("TEST", {})
if env.str("TEST_DATABASE_NAME", default=""):
    DATABASES["default"]["TEST"]["NAME"] = env.str("TEST_DATABASE_NAME")

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
AUTH_USER_MODEL = "tenancy.User"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
MEDIA_URL = "media/"
MEDIA_ROOT = env.str("MEDIA_ROOT", default="") or str(BASE_DIR / "media")

# --- Storage: local files by default, S3 through django-storages when S3_BUCKET is set.
S3_BUCKET = env.str("S3_BUCKET", default="")
S3_REGION = env.str("S3_REGION", default="")
if S3_BUCKET:
    STORAGES = {
        "default": {
            "BACKEND": "storages.backends.s3.S3Storage",
            "OPTIONS": {
                "bucket_name": S3_BUCKET,
                "region_name": S3_REGION or None,
                # presigned URLs only (cases.downloads); the bucket stays private
                "querystring_auth": True,
                "default_acl": None,
            },
        },
        "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    }
else:
    STORAGES = {
        "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
        "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    }

# Seconds a document's presigned S3 download URL stays valid (cases.downloads).
DOCUMENT_URL_EXPIRE_SECONDS = env.int("DOCUMENT_URL_EXPIRE_SECONDS", default=60)

# --- REST framework, JWT, OpenAPI -----------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["tenancy.authentication.TenantJWTAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_PAGINATION_CLASS": "core.pagination.PageNumberPagination",
    "PAGE_SIZE": 20,
    "DEFAULT_FILTER_BACKENDS": [
        "django_filters.rest_framework.DjangoFilterBackend",
        "rest_framework.filters.SearchFilter",
        "rest_framework.filters.OrderingFilter",
    ],
    # JSON only (the browsable API with DEBUG alone), whatever Accept says (core.negotiation);
    # bodies bounded and strict (core.parsers).
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"]
    + (["rest_framework.renderers.BrowsableAPIRenderer"] if DEBUG else []),
    "DEFAULT_CONTENT_NEGOTIATION_CLASS": "core.negotiation.JSONContentNegotiation",
    # JSON bodies only (the document upload alone is multipart: cases.apis).
    "DEFAULT_PARSER_CLASSES": ["core.parsers.BoundedJSONParser"],
    "TEST_REQUEST_DEFAULT_FORMAT": "json",
    "DEFAULT_SCHEMA_CLASS": "core.openapi.TaggedAutoSchema",
    "EXCEPTION_HANDLER": "core.errors.api_exception_handler",
    # Plan-tier rate limits are a middleware (tenancy.ratelimit.RateLimitMiddleware), so that
    # they count every tenant request, also those that never reach a DRF view.
    "DEFAULT_THROTTLE_CLASSES": [],
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
    # The client address of throttles (DRF get_ident): 0 = REMOTE_ADDR, X-Forwarded-For
    # never read; N = the N-th address from the right of X-Forwarded-For (N proxies of ours).
    "NUM_PROXIES": env.int("TRUSTED_PROXY_COUNT", default=0),
}

SIMPLE_JWT = {
    "ACCESS_TOKEN_LIFETIME": timedelta(minutes=env.int("JWT_ACCESS_LIFETIME_MINUTES", default=15)),
    "REFRESH_TOKEN_LIFETIME": timedelta(days=env.int("JWT_REFRESH_LIFETIME_DAYS", default=7)),
    "AUTH_HEADER_TYPES": ("Bearer",),
    "UPDATE_LAST_LOGIN": False,
    "SIGNING_KEY": SECRET_KEY,
    "TOKEN_OBTAIN_SERIALIZER": "tenancy.serializers.OrganizationTokenObtainPairSerializer",
    "TOKEN_REFRESH_SERIALIZER": "tenancy.tokens.RotatingTokenRefreshSerializer",
    "TOKEN_BLACKLIST_SERIALIZER": "tenancy.tokens.LogoutSerializer",
    # Microsecond iat (tenancy.tokens); refresh tokens are single use: each refresh
    # blacklists the one sent and returns a new one.
    "AUTH_TOKEN_CLASSES": ("tenancy.tokens.AccessToken",),
    "ROTATE_REFRESH_TOKENS": True,
    "BLACKLIST_AFTER_ROTATION": True,
}
# Request bodies (core.parsers, cases.uploads): JSON, form and multipart bodies of the API
# at most API_MAX_JSON_BYTES (413 body_too_large); a document upload at most
# DOCUMENT_MAX_BYTES (413 file_too_large, refused while it streams), of a type detected from
# its bytes in DOCUMENT_ALLOWED_TYPES (415).
API_MAX_JSON_BYTES = env.int("API_MAX_JSON_BYTES", default=1024 * 1024)
DOCUMENT_MAX_BYTES = env.int("DOCUMENT_MAX_BYTES", default=50 * 1024 * 1024)
# Django's own limits: form fields (also the Idempotency-Key fingerprint's read of a body)
# no larger than a JSON body; file bytes counted first by core.parsers.MaxSizeUploadHandler.
DATA_UPLOAD_MAX_MEMORY_SIZE = API_MAX_JSON_BYTES
FILE_UPLOAD_HANDLERS = [
    "core.parsers.MaxSizeUploadHandler",
    "django.core.files.uploadhandler.MemoryFileUploadHandler",
    "django.core.files.uploadhandler.TemporaryFileUploadHandler",
]
_DOCUMENT_DEFAULT_TYPES = [
    "application/pdf",
    "text/plain",
    "application/rtf",
    "application/msword",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    "application/vnd.ms-excel",
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    "application/vnd.ms-powerpoint",
    "application/vnd.openxmlformats-officedocument.presentationml.presentation",
    "application/vnd.oasis.opendocument.text",
    "application/vnd.oasis.opendocument.spreadsheet",
    "application/vnd.oasis.opendocument.presentation",
    "image/png",
    "image/jpeg",
    "image/gif",
    "image/webp",
    "image/tiff",
    "image/heic",
]
# Unset or empty: the default list (an empty list would refuse every upload).
DOCUMENT_ALLOWED_TYPES = (
    env.list("DOCUMENT_ALLOWED_TYPES", default=_DOCUMENT_DEFAULT_TYPES) or _DOCUMENT_DEFAULT_TYPES
)

# Login throttling of the token endpoints (tenancy.login_throttle): requests per
# LOGIN_RATE_PERIOD_SECONDS per (address, email), per email, per client address; 0 = off.
LOGIN_RATE_PERIOD_SECONDS = env.int("LOGIN_RATE_PERIOD_SECONDS", default=300)
LOGIN_RATE_PER_ADDRESS_EMAIL = env.int("LOGIN_RATE_PER_ADDRESS_EMAIL", default=10)
LOGIN_RATE_PER_EMAIL = env.int("LOGIN_RATE_PER_EMAIL", default=50)
LOGIN_RATE_PER_ADDRESS = env.int("LOGIN_RATE_PER_ADDRESS", default=100)

SPECTACULAR_SETTINGS = {
    "TITLE": "Goldleaves API",
    "DESCRIPTION": "Multi-tenant legal-practice API with metered billing.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "COMPONENT_SPLIT_REQUEST": True,
    # Swagger UI and Redoc from drf-spectacular-sidecar's static files: the docs need no
    # network beyond this server.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    # One tag per resource; an operation's tag is the first path segment after /api/v1/
    # (core.openapi.TaggedAutoSchema), e.g. /api/v1/cases/ -> "Cases".
    "TAGS": [
        {"name": "Auth", "description": "JWT access and refresh tokens."},
        {"name": "Organizations", "description": "The caller's organizations and the active one."},
        {"name": "Clients", "description": "Clients of the active organization."},
        {"name": "Cases", "description": "Cases (matters) of the active organization."},
        {"name": "Documents", "description": "Documents of a case: upload and processing."},
        {
            "name": "Billing",
            "description": "Metered usage: events, summaries, reports, the upcoming invoice.",
        },
    ],
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "billing.schema.document_idempotency_key",
        # 400/401/403/404/411/413/415/429 and the RateLimit headers of every operation
        "core.openapi.document_error_responses",
    ],
}

# --- Email: invitations (tenancy.invitations), sent by the job worker -------------------
# EMAIL_URL (django-environ's email_url): consolemail:// prints each email on the worker's
# output (development); smtp+tls://user:password@smtp.example.com:587 in production.
vars().update(env.email_url("EMAIL_URL", default="consolemail://"))
DEFAULT_FROM_EMAIL = env.str("DEFAULT_FROM_EMAIL", default="no-reply@localhost")
# Hours an invitation link stays valid; the address the emailed link points at (?token=...).
INVITATION_TTL_HOURS = env.int("INVITATION_TTL_HOURS", default=72)
INVITATION_ACCEPT_URL = env.str(
    "INVITATION_ACCEPT_URL", default="http://127.0.0.1:8000/api/v1/auth/invitations/accept/"
)

# --- Tenancy ---------------------------------------------------------------
RLS_ENABLED = env.bool("RLS_ENABLED", default=False)
TENANT_ISOLATION_MODE = env.str("TENANT_ISOLATION_MODE", default="row")
if TENANT_ISOLATION_MODE != "row":
    raise ImproperlyConfigured(
        "TENANT_ISOLATION_MODE supports only 'row' (shared tables, organization_id)."
    )

# --- Metering, billing, rate limits ----------------------------------------
REDIS_URL = env.str("REDIS_URL", default="")
TIER_RATE_LIMITS = env.json(
    "TIER_RATE_LIMITS", default={"starter": {"api": 60}, "pro": {"api": 300}}
)
# Seconds: Redis timeout for a rate-limit check, and the minimum gap between
# "Redis unavailable, failing open" warnings.
RATE_LIMIT_REDIS_TIMEOUT = env.float("RATE_LIMIT_REDIS_TIMEOUT", default=0.25)
RATE_LIMIT_WARNING_INTERVAL = env.int("RATE_LIMIT_WARNING_INTERVAL", default=60)
BILLABLE_ROUTES = env.list("BILLABLE_ROUTES", default=["/api/v1/"])
# Path prefixes of the tenant API: rate limited (every request with an organization, routed
# or not) and honouring Idempotency-Key on POST/PUT/PATCH/DELETE.
API_ROUTES = env.list("API_ROUTES", default=["/api/v1/"])
# Hours a stored Idempotency-Key response is replayed (then purge_idempotency_keys deletes it).
IDEMPOTENCY_KEY_TTL_HOURS = env.int("IDEMPOTENCY_KEY_TTL_HOURS", default=24)
USAGE_RATE_CENTS = env.int("USAGE_RATE_CENTS", default=1)
# Metering (billing.middleware.UsageMiddleware, billing.pricing): see .env.example.
BILLING_METERING_ENABLED = env.bool("BILLING_METERING_ENABLED", default=True)
BILLING_PRICE_BOOK = env.json("BILLING_PRICE_BOOK", default={})
# Plans (billing.plans): per tier its rate limit and, per meter, included units and graduated
# tiers in cents per unit. The default is the settings it replaces: TIER_RATE_LIMITS' limits
# and one open tier at BILLING_PRICE_BOOK[meter] (else USAGE_RATE_CENTS), nothing included.
_BILLING_PLANS_JSON = env.str("BILLING_PLANS", default="").strip()
if _BILLING_PLANS_JSON:
    try:
        BILLING_PLANS = json.loads(_BILLING_PLANS_JSON)
    except ValueError as exc:
        raise ImproperlyConfigured(f"BILLING_PLANS is not valid JSON: {exc}") from None
else:
    BILLING_PLANS = {
        _tier: {
            "name": _tier.capitalize(),
            "rate_limit": (TIER_RATE_LIMITS if isinstance(TIER_RATE_LIMITS, dict) else {}).get(
                _tier, {}
            ),
            "meters": {
                _meter: {
                    "stripe_price_id": "",
                    "included": "0",
                    "tiers": [
                        {
                            "up_to": None,
                            "unit_amount_decimal": str(
                                BILLING_PRICE_BOOK.get(_meter, USAGE_RATE_CENTS)
                                if isinstance(BILLING_PRICE_BOOK, dict)
                                else USAGE_RATE_CENTS
                            ),
                        }
                    ],
                }
                for _meter in ("api.request", "doc.upload", "doc.processed")
            },
        }
        for _tier in ("starter", "pro", "enterprise")
    }
# ISO 4217 currency (lowercase) of the Stripe prices manage.py stripe_setup creates.
BILLING_CURRENCY = env.str("BILLING_CURRENCY", default="usd")
BILLING_UNBILLED_STATUSES = env.list(
    "BILLING_UNBILLED_STATUSES", default=["401", "403", "429", "5xx"]
)
BILLING_EXCLUDED_PATHS = env.list(
    "BILLING_EXCLUDED_PATHS",
    default=["/health", "/api/docs", "/api/schema", "/admin", "/api/v1/billing/health"],
)
STRIPE_API_KEY = env.str("STRIPE_API_KEY", default="")
# Billing event name -> Stripe billing meter event name (JSON).
STRIPE_METERS = env.json(
    "STRIPE_METERS",
    default={"api.request": "api_requests", "doc.upload": "documents", "doc.processed": "pages"},
)
STRIPE_MAX_ATTEMPTS = env.int("STRIPE_MAX_ATTEMPTS", default=5)
STRIPE_RETRY_BACKOFF_SECONDS = env.float("STRIPE_RETRY_BACKOFF_SECONDS", default=1.0)
STRIPE_TIMEOUT_SECONDS = env.float("STRIPE_TIMEOUT_SECONDS", default=30.0)
# Hours after its first send an aggregate may still be resent (billing.E003: whole hours 1-23).
STRIPE_RESEND_WINDOW_HOURS = env.int("STRIPE_RESEND_WINDOW_HOURS", default=23)
# Stripe webhooks (billing.stripe_sync.webhooks): the signing secret(s) (whsec_..., several
# comma-separated, one per Stripe destination; empty: deliveries are refused with 400
# webhook_not_configured) and the tolerance, in
# seconds, between the signature's timestamp and now.
STRIPE_WEBHOOK_SECRET = env.str("STRIPE_WEBHOOK_SECRET", default="")
STRIPE_WEBHOOK_TOLERANCE_SECONDS = env.int("STRIPE_WEBHOOK_TOLERANCE_SECONDS", default=300)

# --- Background jobs: procrastinate on the same PostgreSQL (see DEPLOY.md, "Background jobs")
# Tasks live in each app's tasks.py (discovered) and in goldleaves/housekeeping.py.
PROCRASTINATE_IMPORT_PATHS = ["goldleaves.housekeeping", "billing.stripe_sync.tasks"]
# The worker's own connection logs in as the app role too (tenancy.jobs.on_app_ready).
PROCRASTINATE_ON_APP_READY = "tenancy.jobs.on_app_ready"
# Seconds between a worker's heartbeats, and without one after which its running jobs are
# stalled (retried by housekeeping.retry_stalled_jobs, every minute).
JOB_HEARTBEAT_SECONDS = env.float("JOB_HEARTBEAT_SECONDS", default=10.0)
JOB_STALLED_AFTER_SECONDS = env.float("JOB_STALLED_AFTER_SECONDS", default=30.0)
if JOB_STALLED_AFTER_SECONDS <= JOB_HEARTBEAT_SECONDS:
    raise ImproperlyConfigured(
        "JOB_STALLED_AFTER_SECONDS must be greater than JOB_HEARTBEAT_SECONDS (a live worker "
        "would look stalled between two heartbeats and its jobs would run twice)."
    )
PROCRASTINATE_WORKER_DEFAULTS = {
    "update_heartbeat_interval": JOB_HEARTBEAT_SECONDS,
    "stalled_worker_timeout": JOB_STALLED_AFTER_SECONDS,
}
# Retries of a job on a transient error (database, storage), exponential backoff 2, 4, 8 s...
JOB_MAX_RETRIES = env.int("JOB_MAX_RETRIES", default=11)
# Days a finished job (succeeded, failed, cancelled, aborted) is kept before the daily purge.
JOB_RETENTION_DAYS = env.int("JOB_RETENTION_DAYS", default=7)

# --- Logging: every line carries the request id -------------------------------
# The request_id filter (core.middleware.RequestIdLogFilter) is put on EVERY handler
# below by the loop after the dict, so a handler added later cannot miss it: each record
# reaching any configured handler, from any logger, has request_id (the current request's
# server id, or "-") and client_request_id (its X-Request-ID, or "-"); a record that got one
# from its log call's extra= keeps it.
LOG_LEVEL = env.str("LOG_LEVEL", default="INFO")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {
        "request_id": {"()": "core.middleware.RequestIdLogFilter"},
        "no_periodic_registration": {"()": "core.log_filters.DropPeriodicRegistration"},
    },
    "formatters": {
        "default": {
            "format": "%(asctime)s %(levelname)s [%(request_id)s %(client_request_id)s] "
            "%(name)s: %(message)s"
        }
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": "default",
        }
    },
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        "django.db.backends": {"level": "INFO"},
        # one INFO line per process start ("Adding tasks from blueprint") is noise
        "procrastinate.blueprints": {"level": "WARNING"},
        # ... and so are the two "Registering task ... periodically" lines per periodic task
        "procrastinate.periodic": {"filters": ["no_periodic_registration"]},
        # Django's own console handler (DEBUG only) beside the root's printed every record
        # of the django.* loggers twice ("Watching for file changes" under runserver): the
        # root handler alone prints them (mail_admins: ADMINS is empty).
        "django": {"handlers": [], "level": "INFO", "propagate": True},
    },
}
for _handler_config in LOGGING["handlers"].values():
    _handler_filters = _handler_config.setdefault("filters", [])
    if "request_id" not in _handler_filters:
        _handler_filters.insert(0, "request_id")
