"""The editing pipeline: resolution, conditioning, the denoising loop with temporal reasoning, decoding."""

from chronoedit.pipeline.pipeline import DEFAULT_NEGATIVE_PROMPT, EditPipeline, EditRequest, EditResult

__all__ = ["DEFAULT_NEGATIVE_PROMPT", "EditPipeline", "EditRequest", "EditResult"]
