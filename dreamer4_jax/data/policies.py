"""Behavior policies for Craftax-Classic data collection (pure, single-env; vmapped by the caller).

Dimension keys: L = 2 * CROP_RADIUS + 1 (side of the local crop around the player), M = 64 (map).

The offline data should be worth learning from, like human play is for Minecraft (PAPER 11):
- 'random': uniform actions held for a random 1..max_repeat steps (action repeat), which moves the
  player further than i.i.d. random actions and covers shallow achievements.
- 'seeker': a scripted achievement seeker that reads the symbolic state: it fights adjacent
  zombies, sleeps when tired, drinks and eats when low, walks the Craftax tech tree (wood, table,
  wood pickaxe, stone, stone pickaxe, furnace, coal, iron, iron pickaxe, diamond; swords on the
  way) with a shortest-path field on a local crop, heads towards the nearest wanted block on the
  whole map when none is in the crop, and takes a uniformly random action with probability
  `epsilon` (exploration noise). With probability `try_epsilon` it instead presses one of the ten
  place/make actions, uniformly, wherever it is (a "try"): the game refuses most of them (no
  table near, too little wood). The scripted seeker crafts only when it can, so without tries a
  world model trained on its data never sees a refused craft, and imagination then pays for
  crafts the game would refuse (PAPER 10.3 names that failure; README, "Tries in the data").
- 'view_seeker': the same seeker restricted to what the frame shows (the 7 x 9 cells of the
  Craftax-Classic view around the player): it targets, fights and paths around only what is in
  view, and explores when nothing it wants is visible. The plain seeker reads a 17 x 17 crop and
  the whole map, so many of its moves head for things no frame shows and cannot be imitated from
  pixels; the paper's data come from people who see the screen the agent sees (PAPER 11).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from craftax.craftax_classic.constants import Achievement, Action, BlockType

from dreamer4_jax.envs.craftax import ACTION_ACHIEVEMENT, NUM_ACTIONS, EnvState

POLICY_NAMES = ('random', 'seeker', 'view_seeker')
CROP_RADIUS = 8
# Craftax-Classic shows OBS_DIM = (7, 9) cells (rows, columns) with the player at the centre.
VIEW_ROWS, VIEW_COLS = 3, 4  # cells visible above/below and left/right of the player
PATH_ITERATIONS = 24
INF = 1_000_000

_A = Action
_B = BlockType
_ACH = Achievement
# Move actions (LEFT, RIGHT, UP, DOWN) and their (row, col) offsets, as in craftax DIRECTIONS.
_MOVES = jnp.array([_A.LEFT.value, _A.RIGHT.value, _A.UP.value, _A.DOWN.value], jnp.int32)
_OFFSETS = jnp.array([[0, -1], [0, 1], [-1, 0], [1, 0]], jnp.int32)
_WALKABLE = (_B.GRASS.value, _B.SAND.value, _B.PATH.value)
# The place/make actions a seeker's try presses (those with an achievement of their name).
TRY_ACTIONS = tuple(a for a, ach in enumerate(ACTION_ACHIEVEMENT) if ach >= 0)
# fold_in constant for the try's key: the other keys stay as they were, so a dataset collected
# with try_epsilon = 0 is the one collected before the option existed.
_TRY_KEY = 7


class PolicyState(NamedTuple):
    """Per-env memory of the behavior policies (reset at every episode start)."""

    action: jax.Array  # int32, random policy: the action being repeated
    repeat_left: jax.Array  # int32, random policy: steps left to repeat it
    explore_dir: jax.Array  # int32 in [0, 4), seeker: index into _MOVES while exploring
    explore_left: jax.Array  # int32, seeker: steps left in that direction


def init_policy_state() -> PolicyState:
    z = jnp.zeros((), jnp.int32)
    return PolicyState(z, z, z, z)


def random_policy(
    pstate: PolicyState, key: jax.Array, max_repeat: int
) -> tuple[jax.Array, PolicyState]:
    """Uniform action over the 17 actions, repeated for 1..max_repeat steps."""
    ka, kr = jax.random.split(key)
    fresh = pstate.repeat_left <= 0
    action = jnp.where(fresh, jax.random.randint(ka, (), 0, NUM_ACTIONS), pstate.action)
    left = jnp.where(fresh, jax.random.randint(kr, (), 1, max_repeat + 1), pstate.repeat_left)
    return action, pstate._replace(action=action, repeat_left=left - 1)


def _crop(grid: jax.Array, pos: jax.Array, fill) -> jax.Array:
    """[M, M] -> [L, L] centred on pos, `fill` outside the map."""
    r = CROP_RADIUS
    padded = jnp.pad(grid, r, constant_values=fill)
    return jax.lax.dynamic_slice(padded, (pos[0], pos[1]), (2 * r + 1, 2 * r + 1))


def _mob_crop(mobs, pos: jax.Array) -> jax.Array:
    """bool [L, L]: cells of the crop holding one of `mobs` (a craftax Mobs struct)."""
    size = 2 * CROP_RADIUS + 1
    local = mobs.position - pos + CROP_RADIUS
    inside = mobs.mask & jnp.all((local >= 0) & (local < size), axis=-1)
    local = jnp.clip(local, 0, size - 1)
    hits = jnp.zeros((size, size), jnp.int32).at[local[:, 0], local[:, 1]].max(inside)
    return hits > 0


def _distance_field(goal_LL: jax.Array, cost_LL: jax.Array) -> jax.Array:
    """Actions-to-goal field: D = 0 at goals, D[c] = min over 4-neighbours n of D[n] + cost[n]."""
    d = jnp.where(goal_LL, 0, INF)
    enter = jnp.where(goal_LL, 1, cost_LL)  # stepping next to a goal costs one action (DO)

    def relax(_, d):
        via = d + enter
        pad = jnp.pad(via, 1, constant_values=INF)
        nbr = jnp.minimum(
            jnp.minimum(pad[:-2, 1:-1], pad[2:, 1:-1]), jnp.minimum(pad[1:-1, :-2], pad[1:-1, 2:])
        )
        return jnp.minimum(d, nbr)

    return jax.lax.fori_loop(0, PATH_ITERATIONS, relax, d)


def _wanted_blocks(state: EnvState) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(want [17] bool over block types, want_cows bool, need_table bool) from the tech tree."""
    inv, ach = state.inventory, state.achievements
    has_wp, has_sp, has_ip = inv.wood_pickaxe > 0, inv.stone_pickaxe > 0, inv.iron_pickaxe > 0
    wood_needed = jnp.where(~has_sp, 5, jnp.where(~has_ip, 5, 3))
    stone_needed = jnp.where(~has_sp, 2, jnp.where(~has_ip, 4, 2))
    hungry = state.player_food <= 4
    thirsty = (state.player_drink <= 4) | ~ach[_ACH.COLLECT_DRINK.value]
    want = jnp.zeros((len(BlockType),), bool)
    want = want.at[_B.TREE.value].set(inv.wood < wood_needed)
    want = want.at[_B.STONE.value].set(has_wp & (inv.stone < stone_needed))
    want = want.at[_B.COAL.value].set(has_wp & ~has_ip & (inv.coal < 2))
    want = want.at[_B.IRON.value].set(has_sp & (inv.iron < 2))
    want = want.at[_B.DIAMOND.value].set(has_ip)
    want = want.at[_B.WATER.value].set(thirsty)
    want = want.at[_B.RIPE_PLANT.value].set(True)
    want_cows = hungry | ~ach[_ACH.EAT_COW.value]
    # Nearly out of water or food: only that counts (else a closer tree always wins).
    urgent_drink, urgent_food = state.player_drink <= 2, state.player_food <= 2
    urgent = jnp.zeros_like(want).at[_B.WATER.value].set(urgent_drink)
    urgent = urgent.at[_B.RIPE_PLANT.value].set(urgent_food)
    want = jnp.where(urgent_drink | urgent_food, urgent, want)
    want_cows = jnp.where(urgent_drink & ~urgent_food, False, want_cows | urgent_food)
    materials = (
        (~has_wp & (inv.wood >= 1))
        | (~has_sp & (inv.wood >= 1) & (inv.stone >= 1))
        | (~has_ip & (inv.wood >= 1) & (inv.stone >= 1) & (inv.iron >= 1) & (inv.coal >= 1))
    )
    # Too little wood to place a new table: walk to a visible one.
    want = want.at[_B.CRAFTING_TABLE.value].set(materials & (inv.wood < 3))
    return want, want_cows, materials


def _craft_action(state: EnvState, near_table: jax.Array, near_furnace: jax.Array):
    """(should_craft, action): the first craftable item in tech-tree order, at a table."""
    inv = state.inventory
    wood, stone, iron, coal = inv.wood >= 1, inv.stone >= 1, inv.iron >= 1, inv.coal >= 1
    iron_ok = near_table & near_furnace & wood & stone & iron & coal
    options = [
        (near_table & (inv.wood_pickaxe == 0) & wood, _A.MAKE_WOOD_PICKAXE.value),
        (near_table & (inv.stone_pickaxe == 0) & wood & stone, _A.MAKE_STONE_PICKAXE.value),
        (iron_ok & (inv.iron_pickaxe == 0), _A.MAKE_IRON_PICKAXE.value),
        (near_table & (inv.wood_sword == 0) & (inv.wood_pickaxe > 0) & wood,
         _A.MAKE_WOOD_SWORD.value),
        (near_table & (inv.stone_sword == 0) & (inv.stone_pickaxe > 0) & wood & stone,
         _A.MAKE_STONE_SWORD.value),
        (iron_ok & (inv.iron_sword == 0) & (inv.iron_pickaxe > 0), _A.MAKE_IRON_SWORD.value),
    ]  # fmt: skip
    return _first_of(options, _A.NOOP.value)


def _first_of(options, default):
    """(any condition true, value of the first true one) over (cond, value) pairs."""
    take, value = jnp.zeros((), bool), jnp.asarray(default, jnp.int32)
    for cond, v in reversed(options):
        value = jnp.where(cond, v, value)
        take = take | cond
    return take, value


def view_mask() -> jax.Array:
    """bool [L, L]: the crop cells the frame shows (7 rows x 9 columns around the player)."""
    off = jnp.abs(jnp.arange(2 * CROP_RADIUS + 1) - CROP_RADIUS)  # distance from the player
    return (off[:, None] <= VIEW_ROWS) & (off[None, :] <= VIEW_COLS)


def seeker_policy(
    state: EnvState,
    pstate: PolicyState,
    key: jax.Array,
    epsilon: float,
    visible_only: bool = False,
    try_epsilon: float = 0.0,
) -> tuple[jax.Array, PolicyState]:
    """Scripted achievement seeker with epsilon-uniform exploration noise (see module doc).

    try_epsilon (static): probability that the step's action is replaced by a uniformly chosen
    place/make action (TRY_ACTIONS), after the noise.

    visible_only (static): the 'view_seeker', which knows only the cells its frame shows; cells
    out of view count as out of bounds (never a target, never on a path), mobs there are unseen,
    and the whole-map guidance is off, so it explores until something it wants comes into view.
    """
    k_noise, k_rand, k_dir, k_len = jax.random.split(key, 4)
    r = CROP_RADIUS
    pos, inv, ach = state.player_position, state.inventory, state.achievements
    block_LL = _crop(state.map, pos, _B.OUT_OF_BOUNDS.value)
    cows_LL = _mob_crop(state.cows, pos)
    enemies_LL = _mob_crop(state.zombies, pos) | _mob_crop(state.skeletons, pos)
    mobs_LL = _crop(state.mob_map, pos, False) | cows_LL | enemies_LL
    if visible_only:
        seen = view_mask()
        block_LL = jnp.where(seen, block_LL, _B.OUT_OF_BOUNDS.value)
        cows_LL, enemies_LL, mobs_LL = cows_LL & seen, enemies_LL & seen, mobs_LL & seen

    nbr = _OFFSETS + r  # the four neighbours in crop coordinates
    nbr_block = block_LL[nbr[:, 0], nbr[:, 1]]
    nbr_mob = mobs_LL[nbr[:, 0], nbr[:, 1]]
    nbr_free = jnp.isin(nbr_block, jnp.array(_WALKABLE)) & ~nbr_mob
    facing = jnp.argmax(_MOVES == state.player_direction)  # index into _MOVES
    facing_block, facing_free = nbr_block[facing], nbr_free[facing]
    close = block_LL[r - 1 : r + 2, r - 1 : r + 2]
    near_table = jnp.any(close == _B.CRAFTING_TABLE.value)
    near_furnace = jnp.any(close == _B.FURNACE.value)

    def face_and_do(i):
        return jnp.where(facing == i, _A.DO.value, _MOVES[i])

    # 1. Fight an adjacent zombie or skeleton.
    enemy = enemies_LL[nbr[:, 0], nbr[:, 1]]
    fight = (jnp.any(enemy), face_and_do(jnp.argmax(enemy)))
    # 2. Sleep when tired (wake_up is an achievement) and no enemy is close (a zombie hits a
    # sleeper for 7 of 9 health); first wall off the cell ahead if possible.
    enemy_near = jnp.any(enemies_LL[r - 4 : r + 5, r - 4 : r + 5])
    tired = (state.player_energy <= 3) & ~enemy_near
    wall = facing_free & (inv.stone >= 1)
    sleep = (tired, jnp.where(wall, _A.PLACE_STONE.value, _A.SLEEP.value))
    # 3. Craft the next tool at a table (and furnace).
    craft = _craft_action(state, near_table, near_furnace)
    # 4. Place table / furnace / stone / sapling in front.
    want, want_cows, materials = _wanted_blocks(state)
    place_options = [
        (materials & ~near_table & (inv.wood >= 3), _A.PLACE_TABLE.value),
        (near_table & ~near_furnace & (inv.stone >= 2)
         & ((inv.iron_pickaxe == 0) | ~ach[_ACH.PLACE_FURNACE.value]), _A.PLACE_FURNACE.value),
        (~ach[_ACH.PLACE_STONE.value] & (inv.stone >= 2), _A.PLACE_STONE.value),
        ((inv.sapling >= 1) & (facing_block == _B.GRASS.value), _A.PLACE_PLANT.value),
    ]  # fmt: skip
    do_place, place_action = _first_of(place_options, _A.NOOP.value)
    place = (do_place & facing_free, place_action)
    # Nothing free ahead: step sideways (keeps a table in front within reach, diagonally).
    side = jnp.where(facing < 2, jnp.array([2, 3]), jnp.array([0, 1]))
    side_free = nbr_free[side]
    reposition = (do_place & ~facing_free & jnp.any(side_free), _MOVES[side[jnp.argmax(side_free)]])
    # 5. Search the grass ahead for a sapling (10% per DO) until one was found.
    sapling = (~ach[_ACH.COLLECT_SAPLING.value] & (facing_block == _B.GRASS.value) & facing_free,
               jnp.asarray(_A.DO.value))  # fmt: skip

    # 6. Shortest path to the nearest wanted block (or cow) in the crop.
    target_LL = want[block_LL] | (cows_LL & want_cows)
    mineable = jnp.array([_B.TREE.value, _B.STONE.value, _B.COAL.value, _B.IRON.value,
                          _B.DIAMOND.value])  # fmt: skip
    can_mine = jnp.stack([True, inv.wood_pickaxe > 0, inv.wood_pickaxe > 0,
                          inv.stone_pickaxe > 0, inv.iron_pickaxe > 0])  # fmt: skip
    mine_LL = jnp.any((block_LL[..., None] == mineable) & can_mine, axis=-1)
    walk_LL = jnp.isin(block_LL, jnp.array(_WALKABLE))
    cost_LL = jnp.where(walk_LL, 1, jnp.where(mine_LL, 2, INF))
    cost_LL = jnp.where(mobs_LL, 3, cost_LL)  # mobs move away or get attacked
    # Nothing wanted in the crop: aim at the crop border cells closest to the nearest wanted block
    # of the whole map (Manhattan), so the path field still steers around obstacles.
    target_MM = want[state.map]
    rows, cols = jnp.arange(state.map.shape[0]), jnp.arange(state.map.shape[1])
    dist_MM = jnp.abs(rows[:, None] - pos[0]) + jnp.abs(cols[None, :] - pos[1])
    flat = jnp.argmin(jnp.where(target_MM, dist_MM, INF))
    far_target = jnp.stack([flat // state.map.shape[1], flat % state.map.shape[1]])
    has_far = jnp.any(target_MM) & (not visible_only)
    lr, lc = jnp.arange(2 * r + 1), jnp.arange(2 * r + 1)
    to_far = jnp.abs(lr[:, None] + pos[0] - r - far_target[0]) + jnp.abs(
        lc[None, :] + pos[1] - r - far_target[1]
    )
    border = jnp.zeros_like(walk_LL).at[[0, -1], :].set(True).at[:, [0, -1]].set(True)
    to_far = jnp.where(border & walk_LL, to_far, INF)
    guide_LL = has_far & (to_far <= jnp.min(to_far) + 1)
    goal_LL = jnp.where(jnp.any(target_LL), target_LL, guide_LL)
    dist_LL = _distance_field(goal_LL, cost_LL)
    is_goal_nbr = goal_LL[nbr[:, 0], nbr[:, 1]]
    score = dist_LL[nbr[:, 0], nbr[:, 1]] + jnp.where(is_goal_nbr, 1, cost_LL[nbr[:, 0], nbr[:, 1]])
    best = jnp.argmin(score)
    reachable = score[best] < INF
    interact = (is_goal_nbr[best] & target_LL[nbr[best, 0], nbr[best, 1]]) | ~nbr_free[best]
    seek = (reachable, jnp.where(interact, face_and_do(best), _MOVES[best]))

    # 7. Explore: keep a random direction for a while, turn when blocked.
    blocked = ~nbr_free[pstate.explore_dir]
    renew = (pstate.explore_left <= 0) | blocked
    free_p = jnp.where(nbr_free, 1.0, 1e-3)
    new_dir = jax.random.categorical(k_dir, jnp.log(free_p / free_p.sum()))
    explore_dir = jnp.where(renew, new_dir, pstate.explore_dir)
    explore_left = jnp.where(renew, jax.random.randint(k_len, (), 4, 16), pstate.explore_left - 1)
    explore = _MOVES[explore_dir]

    _, action = _first_of([fight, sleep, craft, place, reposition, sapling, seek], explore)
    noise = jax.random.uniform(k_noise) < epsilon
    action = jnp.where(noise, jax.random.randint(k_rand, (), 0, NUM_ACTIONS), action)
    if try_epsilon > 0:
        k_try, k_which = jax.random.split(jax.random.fold_in(key, _TRY_KEY))
        tried = jnp.asarray(TRY_ACTIONS, jnp.int32)[
            jax.random.randint(k_which, (), 0, len(TRY_ACTIONS))
        ]
        action = jnp.where(jax.random.uniform(k_try) < try_epsilon, tried, action)
    return action, pstate._replace(explore_dir=explore_dir, explore_left=explore_left)


def act(
    policy_id: jax.Array,
    state: EnvState,
    pstate: PolicyState,
    key: jax.Array,
    *,
    max_repeat: int,
    epsilon: float,
    used: tuple[int, ...] = (0, 1),
    try_epsilon: float = 0.0,
) -> tuple[jax.Array, PolicyState]:
    """Action of policy POLICY_NAMES[policy_id]. Every policy in `used` (static ids) is computed
    and the id selects, so a single-policy dataset skips the others' compute."""
    k1, k2 = jax.random.split(key)

    def run(i):
        name = POLICY_NAMES[i]
        if name == 'random':
            return random_policy(pstate, k1, max_repeat)
        return seeker_policy(
            state, pstate, k2, epsilon, visible_only=name == 'view_seeker', try_epsilon=try_epsilon
        )

    outs = [run(i) for i in used]
    action, new_pstate = outs[0]
    for i, (a, p) in zip(used[1:], outs[1:], strict=True):
        mine = policy_id == i
        action = jnp.where(mine, a, action)
        new_pstate = jax.tree.map(lambda x, y, m=mine: jnp.where(m, x, y), p, new_pstate)
    return action.astype(jnp.int32), new_pstate
