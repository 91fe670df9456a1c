"""The lane verification locustfile: ``locust -f loadtest/locustfile.py --host URL --lane-config FILE``.

`lane loadtest` runs it in a subprocess; it also works with plain ``locust`` (options in the
``lane`` group of ``locust --help``). locust is imported first: it monkey-patches the process for
gevent before anything opens a socket.
"""

import locust

from loadtest.plugin import install
from loadtest.users import LaneUser

__all__ = ["LaneUser"]

install(locust.events)
