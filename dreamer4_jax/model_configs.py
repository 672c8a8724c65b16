"""ml-collections sub-configs <-> the frozen dataclasses the models take.

Experiments keep every model option in the config (so `--config.tokenizer.encoder.depth=4` works);
models take frozen dataclasses (hashable Flax attributes). These helpers build one from the other
and say which field is wrong when a value does not fit.
"""

from __future__ import annotations

import dataclasses

import ml_collections

from dreamer4_jax import actions as actions_lib
from dreamer4_jax.agent import AgentConfig
from dreamer4_jax.config_checks import ConfigError
from dreamer4_jax.dynamics import DynamicsConfig
from dreamer4_jax.nn import TransformerConfig
from dreamer4_jax.shortcut import ShortcutConfig
from dreamer4_jax.tokenizer import TokenizerConfig

_OPTIONAL_FIELDS = {
    'num_kv_heads': int,
    'head_dim': int,
    'mlp_hidden': int,
    'pattern': str,
    'time_window': int,
    'softcap': float,
}


def transformer_config_dict(**overrides) -> ml_collections.ConfigDict:
    """A ConfigDict with every TransformerConfig field (defaults, then overrides)."""
    fields = {f.name: f.default for f in dataclasses.fields(TransformerConfig)}
    unknown = set(overrides) - set(fields)
    if unknown:
        raise ValueError(f'unknown transformer fields {sorted(unknown)}')
    fields.update(overrides)
    # None-able fields become typed placeholders so `--config...num_kv_heads=2` parses as int.
    for name, kind in _OPTIONAL_FIELDS.items():
        fields[name] = (
            ml_collections.config_dict.placeholder(kind)
            if (fields[name] is None)
            else ml_collections.FieldReference(fields[name], field_type=kind)
        )
    return ml_collections.ConfigDict(fields)


def transformer_config_from(cd: ml_collections.ConfigDict, where: str) -> TransformerConfig:
    try:
        return TransformerConfig(**cd.to_dict())
    except (TypeError, ValueError) as e:
        raise ConfigError(f'config.{where}: {e}') from e


def tokenizer_config_from(cd: ml_collections.ConfigDict) -> TokenizerConfig:
    try:
        return TokenizerConfig(
            height=int(cd.height),
            width=int(cd.width),
            patch=int(cd.patch),
            # Runs saved before these fields existed cover the whole frame.
            content_height=int(cd.get('content_height', 0)),
            content_width=int(cd.get('content_width', 0)),
            patch_positions=str(cd.get('patch_positions', 'none')),
            num_latents=int(cd.num_latents),
            latent_dim=int(cd.latent_dim),
            max_mask_prob=float(cd.max_mask_prob),
            encoder=transformer_config_from(cd.encoder, 'tokenizer.encoder'),
            decoder=transformer_config_from(cd.decoder, 'tokenizer.decoder'),
        )
    except ValueError as e:
        raise ConfigError(f'config.tokenizer: {e}') from e


def tokenizer_config_dict(**overrides) -> ml_collections.ConfigDict:
    """Defaults of the tokenizer sub-config (model shape + loss settings)."""
    c = ml_collections.ConfigDict()
    c.height = 64
    c.width = 64
    c.patch = 8
    c.content_height = 0  # the patch grid covers the top-left content (0: whole frame)
    c.content_width = 0
    c.patch_positions = 'none'  # 'sincos': fixed 2D positions added to the encoder's patches
    c.num_latents = 16
    c.latent_dim = 16
    c.max_mask_prob = 0.9
    c.encoder = transformer_config_dict(width=128, depth=4, num_heads=4, time_every=4)
    c.decoder = transformer_config_dict(width=128, depth=4, num_heads=4, time_every=4)
    c.loss_weights = ml_collections.ConfigDict({'mse': 1.0, 'lpips': 0.2})  # PAPER 4.3, Eq. 5
    c.lpips_net = 'alexnet'
    c.lpips_frames = 0  # LPIPS on the last N frames of each row; 0 = all frames
    c.rms_beta = 0.95  # PAPER 6.6 [R]
    c.eval_mask_prob = 0.75
    # EMA of the weights, which evaluation, the latent cache and later phases then use; 0 = off
    # (PAPER 8 keeps one for sampling the dynamics; for the tokenizer it is silent [U]).
    c.ema_decay = 0.0
    for key, value in overrides.items():  # not update(): it cannot merge typed placeholders
        if key not in c:
            raise ValueError(f'unknown tokenizer field {key!r}')
        c[key] = value
    return c


# --------------------------------------------------------------------------------------------
# Dynamics (phase 1b)
# --------------------------------------------------------------------------------------------


def dynamics_config_dict(**overrides) -> ml_collections.ConfigDict:
    """Defaults of the dynamics sub-config: model shape, objective, training tricks, sampling.

    Ablation switches of PAPER 12.3 (Table 2), one field each: prediction='v', loss_space='v',
    ramp=False, shortcut=False (plain diffusion forcing), transformer.dense=True, no GQA
    (transformer.num_kv_heads=None), num_registers=0.
    """
    c = ml_collections.ConfigDict()
    c.tokenizer_workdir = ''  # finished tokenizer run (its config is read from the checkpoint)
    c.action_space = 'craftax'  # 'craftax' | 'minecraft' | 'none' | 'continuous:<n>'
    # Model (PAPER 5.1).
    c.pack = 1  # N x C latents -> N/pack x pack*C tokens (PAPER 4.2: 2 for Minecraft)
    c.num_action_tokens = 1
    c.num_registers = 4  # 0 = "no registers" ablation
    c.num_agent_tokens = 0  # phase 2 sets this
    c.input_scale = 'none'  # 'signal': noisy latents times their signal level (outside the paper)
    c.transformer = transformer_config_dict(
        width=256, depth=8, num_heads=4, num_kv_heads=1, time_every=4, time_window=16
    )
    # Objective (PAPER 6).
    c.k_max = 64  # PAPER 6.4 [U]
    c.prediction = 'x'  # 'v' = v-prediction ablation
    c.loss_space = 'x'  # 'v' = v-space loss ablation
    c.ramp = True  # False = no ramp weight
    c.shortcut = True  # False = plain diffusion forcing (every frame d_min, no bootstrap)
    c.bootstrap_fraction = ml_collections.config_dict.placeholder(float)  # None: Eq. 4 as is
    # 'last_frame': a next-frame regressor probe outside the paper (shortcut.ShortcutConfig).
    c.noise_levels = 'diffusion_forcing'
    c.teacher_rows = 0.25  # share of rows with bootstrap frames (teacher passes run on them)
    c.rms_beta = 0.95  # PAPER 6.6 [R]
    # Training tricks (PAPER 6.5, 8).
    c.independent_fraction = 0.3  # rows trained as separate images
    c.short_length = 0  # T1; 0 = every batch is data.window_length (T2) long
    c.short_mode = 'crop'  # short steps: 'crop' = first T1 frames, 'reshape' = T2/T1 rows each
    c.long_every = 10  # with short_length: every 10th step is a long batch
    c.long_only_after = -1  # from this step on only long batches (finetuning); -1 = never
    c.ema_decay = 0.999  # EMA of the weights used for sampling; 0 = off
    c.latents = 'on_the_fly'  # or 'batch': the batch carries pre-computed 'latents'
    # Sampling and open-loop evaluation (PAPER 7).
    c.sampling_steps = 4
    c.context_signal = 0.9  # PAPER 2: signal level of context frames
    c.eval_context = 4
    c.eval_horizon = 0  # 0 = the rest of the eval window
    c.eval_videos = 4
    # psnr_sample_mean_hXX: the PSNR of the average of this many sampled futures next to the
    # single sample's psnr_hXX (eval/open_loop.py); < 2 = off.
    c.eval_samples = 8
    if 'transformer' in overrides:  # replace, not merge: ConfigDict.update cannot merge refs
        c.transformer = overrides.pop('transformer')
    c.update(overrides)
    return c


def action_components_from(name: str) -> tuple[tuple[str, str, int], ...]:
    """(name, kind, size) components of a named action space (dreamer4_jax.actions)."""

    if name == 'none':  # unlabeled video only (e.g. Epic Kitchens, PAPER 13)
        return ()
    if name.startswith('continuous:'):
        space = actions_lib.continuous_action_space(int(name.split(':', 1)[1]))
    elif name in ('craftax', 'minecraft'):
        space = getattr(actions_lib, f'{name}_action_space')()
    else:
        raise ValueError(
            f"unknown action_space {name!r}; use 'craftax', 'minecraft', 'none' or 'continuous:<n>'"
        )
    return tuple((c.name, c.kind, int(c.size)) for c in space.components)


def dynamics_config_from(cd: ml_collections.ConfigDict, tokenizer: TokenizerConfig):
    """DynamicsConfig from the dynamics sub-config and the (frozen) tokenizer's shapes."""

    try:
        return DynamicsConfig(
            num_latents=tokenizer.num_latents,
            latent_dim=tokenizer.latent_dim,
            pack=int(cd.pack),
            actions=action_components_from(str(cd.action_space)),
            num_action_tokens=int(cd.num_action_tokens),
            num_registers=int(cd.num_registers),
            num_agent_tokens=int(cd.num_agent_tokens),
            k_max=int(cd.k_max),
            input_scale=str(cd.get('input_scale', 'none')),
            transformer=transformer_config_from(cd.transformer, 'dynamics.transformer'),
        )
    except ValueError as e:
        raise ConfigError(f'config.dynamics: {e}') from e


def shortcut_config_from(cd: ml_collections.ConfigDict):
    """shortcut.ShortcutConfig (objective switches) from the dynamics sub-config."""

    try:
        return ShortcutConfig(
            k_max=int(cd.k_max),
            prediction=str(cd.prediction),
            loss_space=str(cd.loss_space),
            ramp=bool(cd.ramp),
            shortcut=bool(cd.shortcut),
            bootstrap_fraction=cd.bootstrap_fraction,
            noise_levels=str(cd.get('noise_levels', 'diffusion_forcing')),
        )
    except ValueError as e:
        raise ConfigError(f'config.dynamics: {e}') from e


# --------------------------------------------------------------------------------------------
# Agent finetuning (phase 2), imagination training (phase 3), closed-loop evaluation
# --------------------------------------------------------------------------------------------


def agent_config_dict(**overrides) -> ml_collections.ConfigDict:
    """Defaults of the agent sub-config (PAPER 9; [U] values are labelled in agent.AgentConfig).

    The BC-without-world-model baseline (PAPER 12.1 'BC'): from_scratch=True and
    loss_weights.dynamics=0, everything else equal.
    """
    c = ml_collections.ConfigDict()
    c.dynamics_workdir = ''  # finished dynamics run; its saved config fixes the architecture
    c.from_scratch = False  # True: random transformer weights (the BC baseline)
    c.num_tasks = 22  # Craftax-Classic achievements (PAPER 9.1: 20 Minecraft tasks)
    c.num_agent_tokens = 1  # PAPER 5.1 [U]
    c.mtp_length = 8  # L (PAPER 9.2); offsets 0..L
    c.head_hidden = 256
    c.head_layers = 1
    c.reward_bins = 255  # PAPER 9.2 / 14 (DreamerV3)
    c.value_bins = 255
    c.twohot_low = -20.0
    c.twohot_high = 20.0
    c.loss_weights = ml_collections.ConfigDict({'dynamics': 1.0, 'bc': 1.0, 'reward': 1.0})
    c.rms_beta = 0.95  # PAPER 6.6 [R]
    c.teacher_rows = 0.25  # rows that pay the bootstrap teacher passes (as in phase 1b)
    # EMA of the weights for evaluation, imagination and play (PAPER 8 keeps one for the world
    # model; for phase 2 it is silent [U]: kept as in phase 1b, with the same decay warm-up).
    c.ema_decay = 0.999
    c.data_mode = 'mixture'  # PAPER 9.3: relevant + uniform windows (data.* sets the ratio)
    c.bc_rows = 'relevant'  # PAPER 9.3: BC on task-relevant windows only
    c.dynamics_rows = 'uniform'  # PAPER 9.3: video prediction on uniform windows only
    c.reward_rows = 'all'  # PAPER 9.3 [U]
    # The task prompted on windows without a relevant event (PAPER 9.3 [U]): 'random' (uniform
    # over the tasks), or 'pressed' (Craftax: the task of a place/make action pressed in the
    # window, so refused presses become reward targets of 0 under their own task;
    # world_model.row_tasks).
    c.uniform_prompts = 'random'
    # Weight of Craftax's health term (0.1 per health point gained or lost) in every task's
    # reward target (agent.with_health_reward; not in the paper [U], whose Minecraft tasks pay
    # only on success). 0: off; 1: each task's reward is the game's own reward for its
    # achievement, so phase 3's imagined returns also count the damage taken on the way.
    c.health_reward = 0.0
    c.eval_windows = 0  # held-out windows for the BC / reward metrics; 0: data.eval_batch_size
    c.update(overrides)
    return c


def agent_config_from(cd: ml_collections.ConfigDict, width: int):
    """agent.AgentConfig from the agent sub-config and the dynamics transformer width."""

    try:
        return AgentConfig(
            num_tasks=int(cd.num_tasks),
            num_agent_tokens=int(cd.num_agent_tokens),
            width=int(width),
            mtp_length=int(cd.mtp_length),
            hidden=int(cd.head_hidden),
            layers=int(cd.head_layers),
            reward_bins=int(cd.reward_bins),
            value_bins=int(cd.value_bins),
            twohot_low=float(cd.twohot_low),
            twohot_high=float(cd.twohot_high),
        )
    except ValueError as e:
        raise ConfigError(f'config.agent: {e}') from e


def imagination_config_dict(**overrides) -> ml_collections.ConfigDict:
    """Defaults of the imagination sub-config (PAPER 10)."""
    c = ml_collections.ConfigDict()
    c.agent_workdir = ''  # finished agent (phase 2) run
    c.context = 4  # real frames that start each rollout (the first frames of each window)
    c.horizon = 16  # imagined steps (PAPER 10.1 [U]; DreamerV3: 15)
    c.gamma = 0.997  # PAPER 10.2
    c.lam = 0.95  # PAPER 10.2 [U] (DreamerV3)
    c.alpha = 0.5  # PAPER 10.3
    c.beta = 0.3  # PAPER 10.3 (reverse KL to the frozen BC policy)
    c.value_weight = 1.0
    # c_t of the lambda-returns: 'ones' (PAPER 10.2 [U]) or 'until_reward' (the task pays once:
    # c_s = 1 - clip(r_{s+1}, 0, 1); rl.imagined_continues).
    c.continuation = 'ones'
    # [U] not in the paper: steps that train only the value head before PMPO starts (a value
    # head near its zero init makes every advantage positive).
    c.policy_warmup = 0
    c.data_mode = 'relevant'  # contexts from task-relevant windows, with their tasks
    # [U] not in the paper: the prompt of a context from a uniform window ('mixture' or 'uniform'
    # data_mode). 'random': a task drawn uniformly (PAPER 9.3's reward negatives); 'ladder': the
    # first task of closed_loop.ladder its episode has not unlocked by the context's last frame,
    # the prompt the ladder gives there in closed-loop play.
    c.uniform_prompts = 'random'
    # [U] not in the paper, both for diagnosis: PMPO's sign sets leave out the states whose
    # advantage is within advantage_deadzone of 0 (0: Eq. 11), and reward_scale multiplies the
    # imagined rewards (0: a null control, where every advantage's sign is value noise).
    c.advantage_deadzone = 0.0
    c.reward_scale = 1.0
    # [U] not in the paper: 'sum' (Eq. 10's rewards) or 'running_max' (a state earns only what
    # raises the rollout's best reward so far: repeated chances at a task that pays once, such as
    # presses whose outcome the world model does not draw, are credited once;
    # rl.credited_rewards).
    c.reward_credit = 'sum'
    # [U] not in the paper: imagined rewards below reward_floor count 0 (0: off); the task
    # rewards are binary, and PMPO's signs turn a head's small pay where it is unsure into a
    # full push (rl.imagination_loss_terms).
    c.reward_floor = 0.0
    c.update(overrides)
    return c


def closed_loop_config_dict(**overrides) -> ml_collections.ConfigDict:
    """Defaults of closed-loop evaluation in the real Craftax-Classic environment."""
    c = ml_collections.ConfigDict()
    # Sized for the CPU demo (4 agents in about 3 minutes on 2 cores); raise episodes (1000 in
    # PAPER 11), num_envs and max_steps (Craftax: 10000) for real numbers.
    c.episodes = 16  # per agent and mode (and per task in single-task mode)
    c.num_envs = 16  # episodes played in parallel (lockstep)
    c.max_steps = 300  # episode truncation
    c.modes = 'ladder,single'
    c.ladder = (
        'collect_wood,place_table,make_wood_pickaxe,collect_stone,make_stone_pickaxe,'
        'collect_coal,collect_iron,place_furnace,make_iron_pickaxe,collect_diamond'
    )
    c.single_tasks = 'collect_wood,place_table,collect_sapling'
    c.sample = True  # sample actions (False: most likely action)
    c.seed = 0
    c.update(overrides)
    return c


# --------------------------------------------------------------------------------------------
# Toy regression (the loop's own test phase, dreamer4_jax/train/toy.py)
# --------------------------------------------------------------------------------------------


def toy_config_dict() -> ml_collections.ConfigDict:
    """Defaults of the toy sub-config: an MLP regression on seeded synthetic data."""
    c = ml_collections.ConfigDict()
    c.in_dim = 16
    c.out_dim = 8
    c.width = 64
    c.num_examples = 4096
    return c
