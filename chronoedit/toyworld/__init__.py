"""The toy world: procedural physical edits with their true trajectories, pixel-exact targets and metrics.

    world.py       Obj, Scene, the palette, geometry (extents, bounding circles), scene sampling
    draw.py        Pillow rendering: render(scene) (anti-aliased by supersampling)
    edits.py       the edit grammar: Edit, its prompt, parse_prompt
    trajectory.py  the true 29-frame trajectory of an edit, and whether an edit is valid in a scene
    sample.py      seeded examples (scene, edit, trajectory, truth) and edit sampling
    segment.py     palette segmentation of any image into objects (area, centroid, angle)
    metrics.py     per-edit and per-video metrics against the truth; success
    stats.py       Wilson / t 95% intervals, per-kind summaries
    dataset.py     the dataset writer (training format + truth)
    evaluate.py    the evaluation job of infer/eval.py;  report.py: sweep tables and plots
    eval_config.py BenchmarkConfig, EvalConfig (the only module here that imports the pipeline's config)

Nothing here imports torch except ``evaluate.py`` (through the pipeline) and ``eval_config.py``.
"""

from chronoedit.toyworld.draw import render
from chronoedit.toyworld.edits import KINDS, Edit, parse_prompt
from chronoedit.toyworld.sample import Example, sample_example
from chronoedit.toyworld.world import BACKGROUNDS, COLORS, SHAPES, Obj, Scene

__all__ = [
    "BACKGROUNDS",
    "COLORS",
    "KINDS",
    "SHAPES",
    "Edit",
    "Example",
    "Obj",
    "Scene",
    "parse_prompt",
    "render",
    "sample_example",
]
