"""Recording and the FeedbackService inside the policy process (`--experience-db`).

One store, opened at start-up (a bad URL or an unreachable database stops the
policy with a clear error rather than serving unrecorded by surprise); after
that, store trouble only drops records. The policy's `__main__` uses this as:

    experience = EmbeddedExperience.open(config, tokenizer)   # inert when experience_db is ""
    PolicyServicer(..., traffic=experience.traffic)
    run_server(config, [policy_registration, *experience.registrations], ...)
    experience.close()                                         # on shutdown
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from services.common.server import Registration
from services.experience.traffic import RecordingSettings, TrafficRecorder

log = logging.getLogger(__name__)


@dataclass
class EmbeddedExperience:
    traffic: TrafficRecorder
    registrations: list[Registration] = field(default_factory=list)
    _closers: list[Any] = field(default_factory=list)

    @classmethod
    def open(cls, config, tokenizer=None) -> EmbeddedExperience:
        """From a PolicyConfig's experience_db / record_* fields; `tokenizer` decodes token-id prompts."""
        if not config.experience_db:
            return cls(TrafficRecorder.disabled())
        from services.experience.recorder import ExperienceRecorder
        from services.experience.server import build_servicer
        from services.experience.store import ExperienceStore

        store = ExperienceStore.open(config.experience_db)
        decode = None if tokenizer is None else (lambda ids: tokenizer.decode(ids, skip_special_tokens=False))
        recorder = ExperienceRecorder(store.record_samples, capacity=config.record_buffer_size, decode=decode)
        settings = RecordingSettings(config.record_sample_rate, frozenset(config.record_disabled_tenants))
        servicer = build_servicer(store)
        log.info(
            "recording served samples to %s (sample rate %.3g, tenants off: %s); FeedbackService hosted here",
            store.url,
            settings.sample_rate,
            sorted(settings.disabled_tenants) or "none",
        )
        return cls(
            TrafficRecorder(recorder, settings),
            [servicer.registration()],
            [recorder.close, servicer.close, store.close],
        )

    def close(self) -> None:
        for closer in self._closers:
            closer()
