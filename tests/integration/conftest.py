"""Integration fixtures: real servers on loopback with tiny models (see the *_fixtures modules)."""

from tests.integration.policy_fixtures import *  # noqa: F401,F403
from tests.integration.postgres_fixtures import *  # noqa: F401,F403
from tests.integration.reward_fixtures import *  # noqa: F401,F403
