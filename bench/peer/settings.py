"""Settings of the drf-api-tracking peer variant (bench only): the real settings plus the
``rest_framework_tracking`` app and the ``bench.peer.urls`` URLconf."""

from goldleaves.settings import *  # noqa: F403
from goldleaves.settings import INSTALLED_APPS

INSTALLED_APPS = [*INSTALLED_APPS, "rest_framework_tracking"]
ROOT_URLCONF = "bench.peer.urls"
