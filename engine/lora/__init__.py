"""LoRA on the suite's task families: where to put adapters, training, evaluation and what adapters do.

Modules:

* :mod:`.data` - prompt + target token data with prompt-masked labels; the training DataLoader;
* :mod:`.adapters` - layer strategies (seed / atlas / random / all), PEFT config, parameter counts checked
  against r*(in+out), attach / load / unload of adapters on a :class:`~engine.models.LoadedModel`;
* :mod:`.evaluation` - target-token loss, teacher-forced exact match, greedy generation scored by the suite;
* :mod:`.training` - the training loop (deterministic for a seed), checkpoints, the content-addressed cache;
* :mod:`.analysis` - adapter-effect localisation, checkpoint lock-in, layer skipping with recovery;
* :mod:`.studies` - the LoRA claims' measurements under the seed and the rigorous protocol;
* :mod:`.protocols` - per-tier plans (sizes, budgets; data: ``engine/data/plans.toml``) and the per-model bench
  the claims' procedures (:mod:`engine.studies.lora`) read.
"""

from .adapters import (ALL_LINEAR, MODULE_GROUPS, SEED_LAYERS, LoraError, LoraTarget, ParamCount, adapted,
                       adapter_digest, adapter_disabled_at, adapter_state, atlas_layers, attached,
                       count_parameters, expected_parameters, from_saved, is_adapted, least_important_layers,
                       lora_config, lora_layers_by_layer, matched_ranks, modules_for, random_draws, random_layers, seed_layers,
                       select_layers)
from .analysis import (Localisation, LockIn, Recovery, SkippedLayer, depth_deciles, localise, lock_in,
                       overlap_at_k, recovered_fraction, skip_recover, skipped, top_k)
from .data import (IGNORE, Encoded, LoraDataError, TokenBatch, batches, check_families, collate, encode, encode_all,
                   make_loader, prompt_batches, with_padding_labels)
from .evaluation import (EvalResult, ExampleScore, answer_logits, batch_loss, evaluate, greedy_completions,
                         kl_divergence, target_logits)
from .protocols import CPU_PLAN, GPU_PLAN, LORA_FAMILIES, LoraBench, LoraPlan, plan_for, split_examples
from .studies import (ModuleSweep, Outcome, SkipStudy, TargetingStudy, families_of, module_sweep, run_outcome,
                      seed_config, short, skip_study, targeting_study)
from .training import LoraRun, TrainConfig, cache_key, load_run, lora_cache_dir, train, train_cached

__all__ = [name for name in dir() if not name.startswith("_")]
