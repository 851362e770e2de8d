"""rlhf-feedback-web: a page where people compare and rate live policy samples.

An ASGI app (Starlette, server-rendered Jinja2 templates) that is just another gRPC
client of the policy and feedback services: it generates recorded samples through
PolicyService.Generate and stores every judgement through FeedbackService, with the
signed-in person's own token, so the store's filters, rate limits and durability
apply to it exactly as to any other client.
"""
