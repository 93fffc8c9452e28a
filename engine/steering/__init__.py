"""Steering: difference-of-means directions added to the residual stream, and what they do.

Layout: :mod:`.directions` (contrasts, directions), :mod:`.targets` (target token sets), :mod:`.rigorous` (the
rigorous procedure and random controls), :mod:`.cross_model` (cross-model transfer), :mod:`.seed` (the seed's
procedure). The claim studies built on them are in :mod:`engine.studies.steer`.

Two protocols (the seed research's method and the careful re-measurement; see the project brief's
seed-protocols document):

* **rigorous** (:func:`diff_of_means`, :func:`prepare`, :func:`steer`, :func:`sweep`, :func:`random_control`,
  :func:`transfer`): a direction per layer is the difference of the mean residual stream *after* layer ``l``
  at the answer position (the last prompt token) between two contrast sets of the suite (one family vs the
  rest, or clean vs corrupted prompts). It is added with a **signed** scale ``s`` to the residual after layer
  ``l`` at every real prompt token (``positions=None``; positions are configurable). Scale units:

  - ``"relative"`` (default): the added vector is ``s * r_l * unit(direction)``, where ``r_l`` is the mean
    L2 norm of the residual after layer ``l`` at the answer position over the contrast examples; ``s = 1``
    adds a vector as long as a typical residual there.
  - ``"absolute"``: the added vector is ``s * unit(direction)`` (norm ``|s|``, the seed's convention).

  Effects are measured at the answer position against the unsteered run of the same model and batch:
  ``KL(unsteered || steered)`` (nats, fp32) and the change of ``log P(target set)``, where the target set is
  a per-example set of token ids (the example's own answer token, or the answer tokens of a family).
  Negative scales suppress.

* **seed** (:func:`seed_protocol_steer`, :func:`seed_reference_steer`): the seed's method, faithfully,
  including its flaws: the direction is the mean of the prompt's own residual (layer output) over its tokens,
  normalised to norm ``|s|`` (the sign of ``s`` is dropped), added at all positions, one prompt per forward,
  KL at the last position computed with an fp16 softmax and taken as ``abs``. The seed's 0.021 denominator
  came from another procedure (fp32, a difference-of-means vector from 5 pairs, added at the last position
  only, a late layer): :func:`seed_reference_steer`.

Hooks are the engine's (``engine.interventions.AddVector`` inside ``intervene``/``run_from``); this module
never installs one itself, so a failed forward cannot leave a vector attached to the model.
"""

from __future__ import annotations

from .cross_model import (
    LinearMap,
    MemoryReport,
    TransferResult,
    fit_linear_map,
    relative_layer,
    transfer,
)
from .directions import (
    DEFAULT_SCALES,
    POOLINGS,
    SCALE_UNITS,
    Contrast,
    Directions,
    SteeringError,
    added_vector,
    check_layer,
    clean_corrupt_contrast,
    diff_of_means,
    family_contrast,
    pooled_residuals,
    residual_norms,
)
from .rigorous import (
    Prepared,
    RandomControl,
    SteerResult,
    Sweep,
    off_target_effects,
    prepare,
    random_control,
    random_directions,
    steer,
    steer_direction,
    sweep,
)
from .seed import (
    SeedSteerResult,
    seed_protocol_steer,
    seed_protocol_sweep,
    seed_random_control,
    seed_reference_steer,
)
from .targets import family_target_set, set_logprob, target_matrix, target_token_ids

__all__ = [
    "SCALE_UNITS",
    "POOLINGS",
    "DEFAULT_SCALES",
    "SteeringError",
    "Contrast",
    "family_contrast",
    "clean_corrupt_contrast",
    "pooled_residuals",
    "Directions",
    "added_vector",
    "diff_of_means",
    "residual_norms",
    "check_layer",
    "target_token_ids",
    "family_target_set",
    "target_matrix",
    "set_logprob",
    "Prepared",
    "prepare",
    "SteerResult",
    "steer",
    "steer_direction",
    "Sweep",
    "sweep",
    "random_directions",
    "RandomControl",
    "random_control",
    "off_target_effects",
    "LinearMap",
    "fit_linear_map",
    "MemoryReport",
    "TransferResult",
    "relative_layer",
    "transfer",
    "SeedSteerResult",
    "seed_protocol_steer",
    "seed_protocol_sweep",
    "seed_random_control",
    "seed_reference_steer",
]
