"""The least a Django project needs to serve a view: no database, no installed apps."""

SECRET_KEY = "only-for-the-tests"
DEBUG = False
ALLOWED_HOSTS = ["*"]
ROOT_URLCONF = "site_conf.urls"
INSTALLED_APPS: list[str] = []
MIDDLEWARE: list[str] = []
DATABASES: dict[str, dict[str, str]] = {}
USE_TZ = True
TIME_ZONE = "UTC"
