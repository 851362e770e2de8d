"""`rlhf-feedback-web` / `python -m services.feedback_web`: serve the feedback pages."""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
import threading

import uvicorn

from services.common.config import describe, load_config
from services.common.server import setup_logging
from services.feedback_web.app import build_app
from services.feedback_web.config import FeedbackWebConfig

log = logging.getLogger("services.feedback_web")


class GracefulServer(uvicorn.Server):
    """Drains on SIGTERM/SIGINT and then exits 0, as the gRPC services do.

    (Stock uvicorn re-raises the signal after its graceful shutdown, so a clean stop
    would look like a kill to whoever started the process.)
    """

    @contextlib.contextmanager
    def capture_signals(self):
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def main(argv: list[str] | None = None) -> int:
    config = load_config(FeedbackWebConfig, argv, env_prefix="RLHF_FEEDBACK_WEB_", prog="rlhf-feedback-web")
    setup_logging(config.log_level)
    log.info("feedback web config:\n%s", describe(config))
    if not config.token_file:
        log.error("--token-file is required: it maps sign-in tokens to rater ids (the services' token file)")
        return 2
    app = build_app(config)
    log.info("feedback pages on http://%s:%d/", config.host, config.port)
    GracefulServer(
        uvicorn.Config(
            app,
            host=config.host,
            port=config.port,
            log_level=config.log_level.lower(),
            access_log=False,
            server_header=False,
        )
    ).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
