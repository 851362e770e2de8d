"""Experience metrics: the policy's traffic recorder and the feedback service.

The recorder's series are named `rlhf_policy_*` because they live in the policy
process and describe its serving path.
"""

from prometheus_client import Counter, Gauge

RECORDS_WRITTEN = Counter("rlhf_policy_records_written", "Served samples written to the experience store.")
RECORDS_DROPPED = Counter(
    "rlhf_policy_records_dropped",
    "Served samples not recorded although recording was on: buffer_full (store slower than traffic), "
    "store_error (the write failed), shutdown (still buffered at exit).",
    ("reason",),
)
RECORD_BUFFER_ITEMS = Gauge("rlhf_policy_record_buffer_items", "Samples waiting in the recorder's buffer.")
SUBMISSIONS = Counter(
    "rlhf_feedback_submissions",
    "Feedback submissions by kind and outcome (accepted, gold, invalid_argument, not_found, already_exists, rate_limited).",
    ("kind", "outcome"),
)
