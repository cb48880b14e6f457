# ---
# jupyter:
#   kernelspec:
#     display_name: python3
#     language: python
#     name: python3
# ---

# %%
#| default_exp pairs

# %% [markdown]
# # Pairs: manifests for both protocols, and the checks that refuse a leaky one
#
# > From split records to a pair manifest: one row per pair, each side an (image, recipe).
#
# A **stable** pair shows one lesion twice (label 0); a **changing** pair shows two different
# lesions with the same diagnosis and body site (label 1). The predictor is trained on stable
# pairs of the train split and asked to tell the two kinds apart everywhere.
#
# The two protocols differ in exactly the ways PROTOCOL B1/B2 list:
#
# | | `reference` (the release) | `symmetric` (the paper, leaks closed) |
# |---|---|---|
# | stable pair | clean original → one nuisance draw after fit-to-224 | two independent draws on one image |
# | changing pair | two untouched originals | each side its own draw of the split's family |
# | selection | first n records of the dx-sorted split | dx mix matched to the split's, both labels |
# | randomness | one stream, `default_rng(seed+1009)`, in order | a `SeedSequence` per (seed, split, kind, index) |
# | changing partner | `candidates[cursor mod len]`, no randomness | uniform among candidates, per-pair seed |
#
# In `reference`, "was the target processed?" answers the label; `symmetric` removes that cue.
# Both write the same columns, so everything downstream runs on either.

# %%
#| export
from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pandas as pd

from derma_jepa.data import DataError
from derma_jepa.nuisance import NONE_RECIPE, PRESETS, draw_recipe, get_family, recipe_json, HELD_OUT_FAMILIES
from derma_jepa.split import SPLITS, check_protocol

# %%
from fastcore.test import test_eq, test_fail

# %% [markdown]
# ## Parameters
#
# Families are given as a name or a comma list (`"strong,strong_held_out"`): a list rotates by
# pair index, family = families[i mod k]. The eval family (val and test) defaults to the train
# families. The preset defaults to the protocol's own: `reference` for the reference protocol,
# `paper` for the symmetric one. Leave-one-family-out folds rotate the three held-out families.

# %%
#| export
POLICIES = ("strict", "fallback")
KINDS = ("stable", "changing", "rephoto", "selection", "rephoto_changing")   # new kinds go last: the streams keep their keys
CHANGING_KINDS = ("changing", "rephoto_changing")
ENDPOINT_KINDS = ("rephoto", "rephoto_changing")


def parse_families(families, preset: str) -> tuple[str, ...]:
    "A tuple of family names from a name, comma list or sequence; each checked against `preset`."
    names = tuple(f.strip() for f in (families.split(",") if isinstance(families, str) else families) if f.strip())
    if not names: raise DataError(f"no nuisance family given ({families!r})")
    for n in names: get_family(n, preset)
    return names


def default_preset(protocol: str, preset: str | None = None) -> str:
    "The preset a protocol uses unless one is named."
    if preset is None: return "reference" if check_protocol(protocol) == "reference" else "paper"
    if preset not in PRESETS: raise DataError(f"unknown nuisance preset {preset!r}: choose one of {', '.join(PRESETS)}")
    return preset


def lofo_folds(families=HELD_OUT_FAMILIES) -> list[tuple[tuple[str, ...], str]]:
    "Leave-one-family-out: (train families, held-out eval family) for each family in turn."
    return [(tuple(f for f in families if f != held), held) for held in families]


# %%
test_eq(parse_families("strong, strong_held_out", "reference"), ("strong", "strong_held_out"))
test_fail(lambda: parse_families("strong,blur", "paper"), contains="unknown nuisance family 'blur'")
test_eq(lofo_folds()[2], (("strong", "strong_held_out"), "strong_held_out_2"))

# %% [markdown]
# ## Changing-pair partners
#
# A partner is another lesion of the same split. `strict`: same dx and same site. `fallback`
# (EXP-001): the first non-empty tier of same patient, same dx + site, same dx, same site, any
# other lesion. Candidates keep the split's (dx, site, lesion_id, image_id) order.

# %%
#| export
TIERS = ("patient", "dx+site", "dx", "site", "any")


class Partners:
    "Candidate partners of every record of one split, by tier, as position arrays in split order."
    def __init__(self, recs: pd.DataFrame):
        self.lesion = recs.lesion_id.to_numpy()
        self.patient = recs.patient_id.to_numpy()
        self.dx, self.site = recs.dx.to_numpy(), recs.site.to_numpy()
        recs = recs.reset_index(drop=True)
        by = lambda key: {k: np.sort(v) for k, v in recs.groupby(key).indices.items()}
        self._pos, self._dx, self._site = by(["dx", "site"]), by("dx"), by("site")
        self._all = np.arange(len(recs))

    def pool(self, a: int, tier: str) -> np.ndarray:
        if tier == "patient":
            if not self.patient[a]: return self._all[:0]
            pool = self._all[self.patient == self.patient[a]]
        elif tier == "dx+site": pool = self._pos[(self.dx[a], self.site[a])]
        elif tier == "dx": pool = self._dx[self.dx[a]]
        elif tier == "site": pool = self._site[self.site[a]]
        else: pool = self._all
        return pool[self.lesion[pool] != self.lesion[a]]

    def candidates(self, a: int, policy: str) -> tuple[np.ndarray, str | None]:
        "The candidates of anchor `a` under `policy`, and the tier they come from (None: no partner)."
        for tier in (("dx+site",) if policy == "strict" else TIERS):
            c = self.pool(a, tier)
            if len(c): return c, tier
        return self._all[:0], None


# %% [markdown]
# ## One row per pair
#
# Sides are identified by image id (the records table knows the file and its checksum) and a
# canonical recipe. The manifest carries no paths, so the same config gives the same bytes on
# any machine.

# %%
#| export
MANIFEST_COLUMNS = ["pair_id", "split", "label", "kind", "family", "context_image_id", "target_image_id",
                    "context_recipe", "target_recipe", "context_lesion_id", "target_lesion_id", "dx", "site",
                    "target_dx", "target_site", "context_sha256", "target_sha256", "policy_tier", "protocol"]


def _row(split, kind, i, family, c, t, c_recipe, t_recipe, tier, protocol) -> dict:
    return dict(pair_id=f"{split}_{kind}_{i:04d}", split=split, label=int(kind in CHANGING_KINDS), kind=kind,
                family=family, context_image_id=c.image_id, target_image_id=t.image_id,
                context_recipe=recipe_json(c_recipe), target_recipe=recipe_json(t_recipe),
                context_lesion_id=c.lesion_id, target_lesion_id=t.lesion_id, dx=c.dx, site=c.site,
                target_dx=t.dx, target_site=t.site, context_sha256=c.sha256, target_sha256=t.sha256,
                policy_tier=tier, protocol=protocol)


def _split_recs(split_df: pd.DataFrame, split: str, need: int) -> pd.DataFrame:
    recs = split_df[split_df.split == split].reset_index(drop=True)
    if len(recs) < need:
        raise DataError(f"split {split!r} has {len(recs)} images but {need} pairs per label were requested: "
                        f"lower pairs_per_split or use more data")
    return recs


# %% [markdown]
# ## One pair builder, four switches
#
# The release's manifest (PROTOCOL A3) and the paper's (PROTOCOL B2) differ in four ways of
# building pairs, and in a fifth, the split rule (02_split). The four are a table of switches, one
# builder reads them, so each difference can be closed on its own (the ablation of 12_experiment):
#
# | switch | `reference` (the release) | `symmetric` (the paper) |
# |---|---|---|
# | `processing` | only a stable pair's target is processed; the context and both sides of a changing pair are untouched originals (not even fit to 224) | both sides of both labels get an independent draw of the split's family |
# | `streams` | one generator, `default_rng(seed + 1009)`, consumed in order: train, val, test | a generator per pair, `SeedSequence(seed, spawn_key=(split, kind, i))`, spawned into context, target and partner streams, so any pair can be rebuilt alone |
# | `selection` | stable pair i is `records[i]` of the dx-sorted split; changing anchors walk cyclically from position n, at most 4N steps, skipping (and counting) anchors without partner | the split's dx mix as per-dx quotas (largest remainder); stable contexts and changing anchors (among images with a partner) sampled within each dx, on a selection generator of their own |
# | `partner` | `candidates[walk position mod len]` | a draw from the pair's partner stream |
#
# Under `reference` the stream is consumed by stable targets only (nothing else is drawn).
# Families rotate by pair index, for changing pairs exactly like stable ones wherever they are
# processed.

# %%
#| export
PAIRING = {"reference": {"processing": "target", "streams": "sequential", "selection": "sorted", "partner": "walk"},
           "symmetric": {"processing": "both", "streams": "per-pair", "selection": "dx", "partner": "random"}}
ABLATIONS = ("processing", "streams", "selection", "partner", "split")    # `split`: 02_split's rule, the rest PAIRING's


def parse_ablate(ablate) -> tuple[str, ...]:
    "The differences a `reference` run takes from `symmetric`, in ABLATIONS' order (a comma list or a sequence)."
    names = [n.strip() for n in (ablate.split(",") if isinstance(ablate, str) else ablate) if n.strip()]
    bad = [n for n in names if n not in ABLATIONS]
    if bad: raise DataError(f"ablate: unknown difference {bad[0]!r}; choose among {', '.join(ABLATIONS)}")
    return tuple(n for n in ABLATIONS if n in names)


def pairing_for(protocol: str, ablate=()) -> dict:
    "The switches `protocol` builds pairs with, those named in `ablate` taken from `symmetric`."
    p = dict(PAIRING[check_protocol(protocol)])
    for k in parse_ablate(ablate):
        if k in p: p[k] = PAIRING["symmetric"][k]
    return p


def pair_streams(seed: int, split: str, kind: str, index: int) -> list[np.random.Generator]:
    "The context, target and partner generators of one symmetric pair."
    ss = np.random.SeedSequence(seed, spawn_key=(SPLITS.index(split), KINDS.index(kind), index))
    return [np.random.default_rng(s) for s in ss.spawn(3)]


def pair_recipes(seed, split, kind, index, family, preset="paper", size=224, streams=None) -> tuple[dict, dict]:
    "Context and target recipes of symmetric pair `index`: two independent draws of `family`."
    ctx, tgt, _ = streams or pair_streams(seed, split, kind, index)
    return (draw_recipe(family, ctx, index, preset, size, private=True),
            draw_recipe(family, tgt, index, preset, size, private=True))


def dx_quotas(dx: pd.Series, n: int) -> dict[str, int]:
    "Split `n` over diagnoses in proportion to their frequency in `dx` (largest remainder, ties by name)."
    share = dx.value_counts(normalize=True).sort_index() * n
    q = np.floor(share).astype(int)
    rest = (share - q).sort_values(ascending=False, kind="stable").index[: n - q.sum()]
    q[rest] += 1
    return {k: int(v) for k, v in q.items() if v}


def _sample(rng, pool: np.ndarray, k: int) -> np.ndarray:
    if k <= len(pool): return rng.choice(pool, size=k, replace=False)
    return np.concatenate([rng.permutation(pool), rng.choice(pool, size=k - len(pool), replace=True)])


def select_by_dx(rng, dx: np.ndarray, eligible: np.ndarray, quotas: dict) -> np.ndarray:
    "Positions with the quotas' dx mix, sampled among `eligible` positions, returned shuffled."
    picks, short = [], 0
    for d, k in quotas.items():
        pool = eligible[dx[eligible] == d]
        if len(pool): picks.append(_sample(rng, pool, k))
        else: short += k
    if short: picks.append(_sample(rng, eligible, short))    # a dx with no eligible image: fill from all
    return rng.permutation(np.concatenate(picks)) if picks else eligible[:0]


def _walk(partners: Partners, n: int, N: int, policy: str, split: str) -> tuple[list[tuple[int, int]], int]:
    "The release's changing anchors: (anchor, walk position) from position n on, cyclically, at most 4N steps; and the skips."
    anchors, skipped, cursor = [], 0, 0
    while len(anchors) < n and cursor < 4 * N:
        a = (cursor + n) % N
        if partners.candidates(a, policy)[1] is None: skipped += 1
        else: anchors.append((a, cursor))
        cursor += 1
    if len(anchors) < n:
        raise DataError(f"split {split!r}: only {len(anchors)} changing pairs under policy {policy!r} "
                        f"({n} requested, {skipped} anchors without partner)")
    return anchors, skipped


def pair_manifest(split_df, train_families, eval_families, policy="strict", preset="paper", pairs_per_split=1000,
                  seed=20260422, size=224, pairing=PAIRING["symmetric"], protocol="symmetric") -> tuple[pd.DataFrame, dict]:
    "A manifest built with the `pairing` switches (rows labelled `protocol`), and its construction log."
    n, both = pairs_per_split, pairing["processing"] == "both"
    seq = np.random.default_rng(seed + 1009) if pairing["streams"] == "sequential" else None
    streams = (lambda split, kind, i: [seq] * 3) if seq is not None else (lambda split, kind, i: pair_streams(seed, split, kind, i))
    draw = lambda fam, g, i: draw_recipe(fam, g, i, preset, size, private=seq is None)
    rows, log = [], {"changing_tiers": {}, **({"changing_skipped": {}} if pairing["selection"] == "sorted" else {"changing_anchors_reused": {}})}
    for split in SPLITS:
        fams = train_families if split == "train" else eval_families
        recs = _split_recs(split_df, split, n)
        items, dx, N, partners = list(recs.itertuples(index=False)), recs.dx.to_numpy(), len(recs), Partners(recs)
        if pairing["selection"] == "dx":
            quotas = dx_quotas(recs.dx, n)
            sel = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(SPLITS.index(split), KINDS.index("selection"))))
            stable = select_by_dx(sel, dx, np.arange(N), quotas)
            eligible = np.array([a for a in range(N) if partners.candidates(a, policy)[1] is not None], int)
            if not len(eligible): raise DataError(f"split {split!r}: no image has a changing partner under policy {policy!r}")
            anchors = [(int(a), i) for i, a in enumerate(select_by_dx(sel, dx, eligible, quotas))]
            log["changing_anchors_reused"][split] = len(anchors) - len({a for a, _ in anchors})
        else:
            stable, (anchors, log["changing_skipped"][split]) = np.arange(n), _walk(partners, n, N, policy, split)
        for i, c in enumerate(stable):
            fam, g = fams[i % len(fams)], streams(split, "stable", i)
            cr = draw(fam, g[0], i) if both else NONE_RECIPE
            rows.append(_row(split, "stable", i, fam, items[c], items[c], cr, draw(fam, g[1], i), "same-image", protocol))
        tiers = Counter()
        for i, (a, pos) in enumerate(anchors):
            cands, tier = partners.candidates(a, policy)
            g = streams(split, "changing", i)
            t = cands[int(g[2].integers(len(cands)))] if pairing["partner"] == "random" else cands[pos % len(cands)]
            fam = fams[i % len(fams)] if both else "none"
            cr, tr = (draw(fam, g[0], i), draw(fam, g[1], i)) if both else (NONE_RECIPE, NONE_RECIPE)
            rows.append(_row(split, "changing", i, fam, items[a], items[t], cr, tr, tier, protocol))
            tiers[tier] += 1
        log["changing_tiers"][split] = dict(tiers)
    return pd.DataFrame(rows, columns=MANIFEST_COLUMNS), log


# %% [markdown]
# ## The real re-photograph endpoint, shared by both protocols
#
# A synthetic stable pair under `symmetric` is two draws on *the same photograph*; a pixel metric
# tells it from a different lesion almost by construction. The honest stable pair is a real
# re-photograph: two different photographs (different bytes) of one lesion. HAM10000 has 1,956
# lesions with two or more.
#
# The endpoint is one evaluation set per split (val and test) and seed, built the same way under
# both protocols, beside (never inside) each protocol's own pairs, so the release's pairs stay
# byte-identical and the two protocols differ only in what they trained. Per lesion with two
# photographs (in lesion order): a **re-photo pair** (two of its photographs, drawn from the pair's
# own stream) and a **matched changing pair** that keeps the re-photo pair's context side (the same
# photograph, the same recipe) and takes as target another lesion's photograph, a partner under the
# run's policy (same diagnosis and site under `strict`). The comparison is then paired by
# construction: each lesion contributes one stable and one changing pair with one shared context,
# and the two kinds have the same diagnosis and site mix, which the main changing pairs do not
# (their dx mix follows the split, 67% nv, against ~52% nv among lesions with re-photographs). A
# lesion without a partner contributes neither pair (logged). Both sides of both pairs are drawn
# from the split's family with the symmetric preset, like every symmetric side. The records come
# from `shared_split` (02_split), so no lesion of the set is trained on under either protocol.

# %%
#| export
ENDPOINT_SPLITS = ("val", "test")


def rephoto_endpoint(shared: pd.DataFrame, families, policy="strict", preset="paper", seed=20260422, size=224,
                     splits=ENDPOINT_SPLITS) -> tuple[pd.DataFrame, dict]:
    "Re-photo pairs and their matched changing pairs on `shared` split records (02_split's `shared_split`), with a log."
    families = parse_families(families, preset)
    rows, log = [], {"lesions": {}, "without_partner": {}, "changing_tiers": {}}
    for split in splits:
        recs = shared[shared.split == split].reset_index(drop=True)
        items, partners = list(recs.itertuples(index=False)), Partners(recs)
        uniq = recs.drop_duplicates("sha256")
        groups = {k: uniq.index[v] for k, v in uniq.groupby("lesion_id", sort=True).indices.items() if len(v) >= 2}
        tiers, lonely = Counter(), 0
        for i, lesion in enumerate(sorted(groups)):
            fam, g = families[i % len(families)], groups[lesion]
            streams, other = pair_streams(seed, split, "rephoto", i), pair_streams(seed, split, "rephoto_changing", i)
            c, t = g[streams[2].choice(len(g), size=2, replace=False)]
            cands, tier = partners.candidates(c, policy)
            if tier is None: lonely += 1; continue
            p = cands[int(other[2].integers(len(cands)))]
            cr, tr = pair_recipes(seed, split, "rephoto", i, fam, preset, size, streams)
            pr = pair_recipes(seed, split, "rephoto_changing", i, fam, preset, size, other)[1]
            rows += [_row(split, "rephoto", i, fam, items[c], items[t], cr, tr, "same-lesion", "shared"),
                     _row(split, "rephoto_changing", i, fam, items[c], items[p], cr, pr, tier, "shared")]
            tiers[tier] += 1
        log["lesions"][split], log["without_partner"][split], log["changing_tiers"][split] = len(groups), lonely, dict(tiers)
    return pd.DataFrame(rows, columns=MANIFEST_COLUMNS), log


def _tvd(a: pd.Series, b: pd.Series) -> float:
    "Total-variation distance between the value distributions of two columns."
    return round(float(0.5 * a.value_counts(normalize=True).sub(b.value_counts(normalize=True), fill_value=0).abs().sum()), 4)


def endpoint_mix(m: pd.DataFrame) -> dict:
    """Per split with re-photo pairs: how many, the diagnosis and site TVD between the re-photo pairs' targets and
    the matched changing pairs' targets (their contexts are the same photographs), and for comparison the diagnosis
    TVD the re-photo pairs would have against the split's main changing pairs."""
    out = {}
    for s, g in m[m.kind.isin(ENDPOINT_KINDS)].groupby("split", sort=False):
        r, c, main = g[g.kind == "rephoto"], g[g.kind == "rephoto_changing"], m[(m.split == s) & (m.kind == "changing")]
        out[s] = {"pairs": int(len(r)), "tv_dx": _tvd(r.target_dx, c.target_dx), "tv_site": _tvd(r.target_site, c.target_site),
                  "tv_dx_vs_main_changing": _tvd(r.dx, main.dx) if len(main) else None}
    return out


# %% [markdown]
# ## Validation
#
# A manifest is refused, naming the first offending pair, when a lesion (or, in `symmetric`, a
# file's bytes) appears in two splits, a stable or rephoto pair spans two lesions, a changing pair
# shares a lesion, a strict changing pair differs in dx or site, or a split lacks one of the labels.

# %%
#| export
def _spanning(m: pd.DataFrame, key: str) -> tuple | None:
    sides = pd.concat([m[["pair_id", "split", f"context_{key}"]].set_axis(["pair_id", "split", key], axis=1),
                       m[["pair_id", "split", f"target_{key}"]].set_axis(["pair_id", "split", key], axis=1)])
    n = sides.groupby(key).split.nunique()
    if (n > 1).any():
        v = n[n > 1].index[0]
        hit = sides[sides[key] == v].drop_duplicates("split")
        return v, list(hit.split), list(hit.pair_id)
    return None


def validate_manifest(m: pd.DataFrame, policy: str = "strict") -> pd.DataFrame:
    "Raise `DataError` on the first leak or mislabelled pair; return the manifest otherwise."
    missing = [c for c in MANIFEST_COLUMNS if c not in m]
    if missing: raise DataError(f"manifest lacks columns {missing}")
    protocol = m.protocol.iloc[0] if len(m) else "symmetric"
    for key, what in [("lesion_id", "lesion"), ("sha256", "image checksum")][: 2 if protocol == "symmetric" else 1]:
        hit = _spanning(m, key)
        if hit: raise DataError(f"{what} {hit[0]} appears in splits {hit[1]} (pairs {hit[2]})")
    same = m.context_lesion_id == m.target_lesion_id
    checks = [((m.label == 0) & ~same, "stable pair spans two lesions"),
              ((m.label == 1) & same, "changing pair shares a lesion")]
    if policy == "strict":
        checks.append(((m.label == 1) & ((m.dx != m.target_dx) | (m.site != m.target_site)),
                       "strict changing pair differs in dx or site"))
    for bad, msg in checks:
        if bad.any():
            r = m[bad].iloc[0]
            raise DataError(f"{msg}: {r.pair_id} ({r.context_image_id} of {r.context_lesion_id}, {r.dx}, {r.site} vs "
                            f"{r.target_image_id} of {r.target_lesion_id}, {r.target_dx}, {r.target_site})")
    for s in SPLITS:
        labels = set(m.label[m.split == s])
        if labels != {0, 1}: raise DataError(f"split {s!r} has labels {sorted(labels)}: both 0 and 1 are needed")
    return m


# %% [markdown]
# ## One entry point
#
# `build_manifest` takes the data-side configuration, builds the pairs with the protocol's switches
# (or, for the ablation, `reference` with some of them taken from `symmetric`), validates, and
# returns the manifest with its construction log.

# %%
#| export
def build_manifest(split_df: pd.DataFrame, protocol="symmetric", train_families="strong", eval_family=None,
                   changing_policy="strict", preset=None, pairs_per_split=1000, seed=20260422, size=224,
                   shared: pd.DataFrame | None = None, ablate=()) -> tuple[pd.DataFrame, dict]:
    """A validated pair manifest for `protocol` (with the pairing differences named in `ablate` taken from `symmetric`),
    and its construction log; with `shared` (02_split's `shared_split` of the same records and seed) the re-photo
    endpoint follows the protocol's pairs, built the same under both."""
    named, preset, pairing = preset, default_preset(protocol, preset), pairing_for(protocol, ablate)
    if changing_policy not in POLICIES:
        raise DataError(f"unknown changing_policy {changing_policy!r}: choose one of {', '.join(POLICIES)}")
    if int(pairs_per_split) < 1: raise DataError(f"pairs_per_split must be at least 1, got {pairs_per_split}")
    train = parse_families(train_families, preset)
    evalf = parse_families(eval_family, preset) if eval_family else train
    m, log = pair_manifest(split_df, train, evalf, changing_policy, preset, pairs_per_split, seed, size, pairing, protocol)
    log.update(protocol=protocol, preset=preset, train_families=list(train), eval_families=list(evalf))
    if pairing != PAIRING[protocol]: log["pairing"] = pairing
    if shared is not None:
        e, log["rephoto"] = rephoto_endpoint(shared, evalf, changing_policy, default_preset("symmetric", named), seed, size)
        m = pd.concat([m, e], ignore_index=True)
    return validate_manifest(m, changing_policy), log


def manifest_sides(m: pd.DataFrame) -> pd.DataFrame:
    "The distinct (image_id, recipe) sides a manifest needs rendered and embedded, in first-use order."
    sides = pd.concat([m[["context_image_id", "context_recipe"]].set_axis(["image_id", "recipe"], axis=1),
                       m[["target_image_id", "target_recipe"]].set_axis(["image_id", "recipe"], axis=1)])
    return sides.drop_duplicates().reset_index(drop=True)


def distinct_sides(m: pd.DataFrame) -> int:
    "How many distinct (image, recipe) sides a manifest has."
    return int(len(manifest_sides(m)))


def dx_mix(m: pd.DataFrame) -> dict:
    "Per split and label: the dx distribution of the pairs, and the total-variation distance between labels."
    out = {}
    for s, g in m[m.kind.isin(["stable", "changing"])].groupby("split", sort=False):
        mix = pd.crosstab(g.dx, g.label, normalize="columns")
        out[s] = {"stable": {k: round(float(v), 4) for k, v in mix.get(0, pd.Series()).items()},
                  "changing": {k: round(float(v), 4) for k, v in mix.get(1, pd.Series()).items()},
                  "tv_distance": round(float(0.5 * (mix.get(0, 0) - mix.get(1, 0)).abs().sum()), 4)}
    return out


# %% [markdown]
# ## Seeing pairs
#
# `pair_gallery` renders both sides of the first `n` stable and `n` changing pairs of a manifest,
# from the records' files: what the backbone will be shown, side by side.

# %%
#| export
def render_side(records: pd.DataFrame, image_id: str, recipe: str):
    "Render one manifest side from the records' file for `image_id`."
    from derma_jepa.nuisance import load_rgb, render
    return render(load_rgb(records.path[records.image_id == image_id].iloc[0]), recipe)


def pair_gallery(manifest: pd.DataFrame, records: pd.DataFrame, n: int = 3, size: int = 160):
    "A figure of the first `n` stable and `n` changing pairs: context and target, rendered."
    import matplotlib.pyplot as plt
    rows = pd.concat([manifest[manifest.kind == "stable"].head(n), manifest[manifest.kind == "changing"].head(n)])
    fig, axes = plt.subplots(len(rows), 2, figsize=(4.4, 2.2 * len(rows)), squeeze=False)
    for ax_row, r in zip(axes, rows.itertuples()):
        for ax, side in zip(ax_row, ("context", "target")):
            recipe = getattr(r, f"{side}_recipe")
            im = render_side(records, getattr(r, f"{side}_image_id"), recipe)
            ax.imshow(im.resize((size, round(size * im.height / im.width))))
            ax.set_xticks([]); ax.set_yticks([])
            ax.set_title(f"{side}: {json.loads(recipe)['family']}", fontsize=7)
        ax_row[0].set_ylabel(f"{r.kind} ({r.dx})\n{r.pair_id}", fontsize=7)
    fig.tight_layout()
    return fig


# %% [markdown]
# ## Tests on the fixture
#
# Both protocols on a small fixture: the validation holds, the manifest is deterministic,
# sides are processed as each protocol says, dx mixes match in `symmetric`, and a pair rebuilt
# alone equals the same pair in the full manifest.

# %%
from derma_jepa.data import load_records
from derma_jepa.fixture import fixture_dir
from derma_jepa.split import shared_split, split_records

_recs = load_records(fixture_dir(n_lesions=300, seed=0))
_sp = split_records(_recs, seed=7)
_kw = dict(train_families="strong,strong_held_out", eval_family="strong_held_out_2", pairs_per_split=40, seed=7)
_ref, _rlog = build_manifest(_sp, "reference", **_kw)
_sym, _slog = build_manifest(_sp, "symmetric", shared=shared_split(_recs, 7), **_kw)
test_eq(len(_ref), 240)
test_eq(set(_ref.context_recipe[_ref.kind == "stable"]) | set(_ref.target_recipe[_ref.kind == "changing"]), {recipe_json(NONE_RECIPE)})
assert (_sym.context_recipe != recipe_json(NONE_RECIPE)).all() and (_sym.target_recipe != recipe_json(NONE_RECIPE)).all()
test_eq(_ref.equals(build_manifest(_sp, "reference", **_kw)[0]), True)
test_eq(_sym.equals(build_manifest(_sp, "symmetric", shared=shared_split(_recs, 7), **_kw)[0]), True)
# dx mixes match where every diagnosis has partners (the train split here; every split on HAM10000);
# in this small fixture's val/test, rare diagnoses have no same-site partner, and the gap shows
assert dx_mix(_sym)["train"]["tv_distance"] <= 0.05, dx_mix(_sym)
assert dx_mix(_ref)["train"]["tv_distance"] > 0.5          # the release's dx-sorted selection
# rotation by index: even pairs strong, odd strong_held_out, for both labels
_tr = _sym[(_sym.split == "train") & (_sym.kind != "rephoto")]
test_eq(set(_tr.family[_tr.pair_id.str[-1].astype(int) % 2 == 0]), {"strong"})
test_eq(_tr.groupby("kind").family.value_counts().unstack().loc["changing"].tolist(),
        _tr.groupby("kind").family.value_counts().unstack().loc["stable"].tolist())
assert (_sym.kind == "rephoto").sum() > 0

# %% [markdown]
# The endpoint: the release's pairs are unchanged by the set beside them, the set is the same rows
# under both protocols, and each re-photo pair has a changing twin with the same context side.

# %%
_ref_e, _ = build_manifest(split_records(_recs, 7, protocol="reference"), "reference", shared=shared_split(_recs, 7), **_kw)
_end = lambda m: m[m.kind.isin(ENDPOINT_KINDS)].reset_index(drop=True)
test_eq(_ref_e[_ref_e.kind.isin(["stable", "changing"])].equals(_ref), True)
test_eq(_end(_ref_e).equals(_end(_sym)), True)
test_eq(set(_end(_sym).split), set(ENDPOINT_SPLITS))
_r, _c = (_end(_sym)[_end(_sym).kind == k].reset_index(drop=True) for k in ENDPOINT_KINDS)
test_eq(_r[["split", "context_image_id", "context_recipe"]].equals(_c[["split", "context_image_id", "context_recipe"]]), True)
assert (_r.context_lesion_id == _r.target_lesion_id).all() and (_r.context_sha256 != _r.target_sha256).all()
assert (_c.context_lesion_id != _c.target_lesion_id).all() and (_c.target_dx == _c.dx).all() and (_c.target_site == _c.site).all()
test_eq((_r.label.unique().tolist(), _c.label.unique().tolist()), ([0], [1]))
test_eq({s: (v["tv_dx"], v["tv_site"]) for s, v in endpoint_mix(_sym).items()}, {"val": (0.0, 0.0), "test": (0.0, 0.0)})
test_eq(_slog["rephoto"]["lesions"]["test"], len(_r[_r.split == "test"]) + _slog["rephoto"]["without_partner"]["test"])
_alone = pair_recipes(7, "test", "rephoto_changing", int(_c.pair_id.iloc[-1][-4:]), _c.family.iloc[-1])[1]
test_eq(recipe_json(_alone), _c.target_recipe.iloc[-1])

# %% [markdown]
# Each switch of the ablation changes what it names, on the release's manifest: `processing`
# keeps every pair and processes every side; `streams` keeps every pair and redraws the targets;
# `partner` keeps the stable pairs and the anchors and redraws the partners (shown on train: the
# one stream of the release couples later splits' draws to earlier ones, which is what `streams`
# undoes); `selection` gives the stable and changing pairs one diagnosis mix.

# %%
test_eq(pairing_for("reference", "partner,split"), {**PAIRING["reference"], "partner": "random"})
test_eq(parse_ablate("split,processing"), ("processing", "split"))
test_fail(lambda: parse_ablate("processing,leak"), contains="unknown difference 'leak'")
_abl = {k: build_manifest(_sp, "reference", ablate=k, **_kw)[0] for k in ("processing", "streams", "selection", "partner")}
_pairs_of = lambda m, kind: m[m.kind == kind][["split", "context_image_id", "target_image_id"]].reset_index(drop=True)
_recipes_of = lambda m, kind: m.target_recipe[m.kind == kind].reset_index(drop=True)
for _k in ("processing", "streams"):
    test_eq([_pairs_of(_abl[_k], kd).equals(_pairs_of(_ref, kd)) for kd in ("stable", "changing")], [True, True])
assert (_abl["processing"].context_recipe != recipe_json(NONE_RECIPE)).all()
assert (_recipes_of(_abl["streams"], "stable") != _recipes_of(_ref, "stable")).all()
_tr_of = lambda m: m[m.split == "train"].reset_index(drop=True)
test_eq(_tr_of(_abl["partner"])[lambda m: m.kind == "stable"].equals(_tr_of(_ref)[lambda m: m.kind == "stable"]), True)
test_eq(list(_pairs_of(_abl["partner"], "changing").context_image_id), list(_pairs_of(_ref, "changing").context_image_id))
assert (_pairs_of(_abl["partner"], "changing").target_image_id != _pairs_of(_ref, "changing").target_image_id).any()
assert dx_mix(_abl["selection"])["train"]["tv_distance"] <= 0.05 < dx_mix(_ref)["train"]["tv_distance"]

# %%
_k = _sym[_sym.kind == "changing"].iloc[13]
_alone = pair_recipes(7, _k.split, "changing", int(_k.pair_id[-4:]), _k.family)
test_eq((recipe_json(_alone[0]), recipe_json(_alone[1])), (_k.context_recipe, _k.target_recipe))


# %% [markdown]
# The validator must refuse each kind of bad manifest.

# %%
def _broken(m, **changes):
    m = m.copy()
    for col, (i, v) in changes.items(): m.loc[m.index[i], col] = v
    return m

_i_ch = int(np.flatnonzero(_sym.label == 1)[0])
_test_lesion = _sym.context_lesion_id[_sym.split == "test"].iloc[0]
test_fail(lambda: validate_manifest(_broken(_sym, context_lesion_id=(0, _test_lesion))), contains="appears in splits")
test_fail(lambda: validate_manifest(_broken(_sym, target_lesion_id=(0, "HAM_x"))), contains="stable pair spans two lesions")
test_fail(lambda: validate_manifest(_broken(_sym, target_lesion_id=(_i_ch, _sym.context_lesion_id[_i_ch]))), contains="changing pair shares")
test_fail(lambda: validate_manifest(_broken(_sym, target_site=(_i_ch, "nowhere"))), contains="differs in dx or site")
test_fail(lambda: validate_manifest(_broken(_sym, context_sha256=(0, _sym.target_sha256[_sym.split == "test"].iloc[0]),
                                            target_sha256=(0, _sym.target_sha256[_sym.split == "test"].iloc[0]))),
          contains="image checksum")
test_fail(lambda: validate_manifest(_sym[~((_sym.split == "val") & (_sym.label == 1))]), contains="split 'val' has labels [0]")
test_fail(lambda: build_manifest(_sp, "symmetric", pairs_per_split=10_000), contains="pairs per label were requested")

# %% [markdown]
# ## On the real copy
#
# The release's counts (PROTOCOL A3) at seed 20260422: 6,000 pairs; 8,004 distinct sides for the
# EXP-004 configuration (5,004 originals + 3,000 variants) and 8,015 for EXP-001; 8 / 15 / 18
# anchors skipped under the strict policy; the fallback policy's dx+site / dx-only tiers 992/8,
# 985/15 and 982/18; train stable pairs akiec 227 + bcc 351 + bkl 422 only.

# %%
import os
if os.environ.get("HAM10000_DIR"):
    _hrec = load_records(os.environ["HAM10000_DIR"])
    _ham = split_records(_hrec, 20260422, protocol="reference")
    _m4, _l4 = build_manifest(_ham, "reference", "strong,strong_held_out", "strong_held_out_2")
    test_eq((len(_m4), distinct_sides(_m4)), (6000, 8004))
    test_eq(_l4["changing_skipped"], {"train": 8, "val": 15, "test": 18})
    test_eq(_m4[(_m4.split == "train") & (_m4.label == 0)].dx.value_counts().to_dict(), {"bkl": 422, "bcc": 351, "akiec": 227})
    _m1, _l1 = build_manifest(_ham, "reference", "mild", changing_policy="fallback")
    test_eq(distinct_sides(_m1), 8015)
    test_eq(_l1["changing_tiers"], {"train": {"dx+site": 992, "dx": 8}, "val": {"dx+site": 985, "dx": 15},
                                    "test": {"dx+site": 982, "dx": 18}})
    _hs = split_records(_hrec, 20260422, protocol="symmetric")
    _s4, _sl4 = build_manifest(_hs, "symmetric", "strong,strong_held_out", "strong_held_out_2",
                               shared=shared_split(_hrec, 20260422))
    assert all(v["tv_distance"] <= 0.05 for v in dx_mix(_s4).values()), dx_mix(_s4)
    print(pd.DataFrame({s: {"tv_distance": v["tv_distance"]} for s, v in dx_mix(_s4).items()}))
    print(_s4.groupby(["split", "kind"]).size().unstack())
    # the endpoint: matched changing pairs have the re-photo pairs' diagnosis and site mix; the main changing pairs do not
    _mix = pd.DataFrame(endpoint_mix(_s4)).T
    print(_mix, "\nlesions without a partner:", _sl4["rephoto"]["without_partner"])
    assert (_mix.tv_dx == 0).all() and (_mix.tv_site == 0).all() and (_mix.tv_dx_vs_main_changing > 0.1).all()

# %% [markdown]
# The two protocols on the same fixture split: in `reference`, only the stable target is
# processed (and the context is the original, not even fit to 224); in `symmetric`, every side is.

# %%
pair_gallery(_ref[_ref.split == "test"], _recs, n=2);

# %%
pair_gallery(_sym[_sym.split == "test"], _recs, n=2);
