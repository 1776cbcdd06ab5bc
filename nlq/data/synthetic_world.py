"""The hidden world behind the synthetic NLQ data: a vocabulary, activity timelines, features.

A synthetic video is a sequence of camera-wearer activities ``(verb, object, place)`` with
start/end times (seconds of the canonical video), separated by short idle gaps. The
activities follow a small state machine (pick an object up, use it, put it somewhere
else), so objects recur and "where did I put X" has a real answer.

Features are rendered from the latent state at 1.875 steps/s (the SlowFast rate): each
step = a view-specific projection of (verb, object, place) embeddings (an idle embedding
between activities) + a slowly drifting per-video scene + noise, smoothed over time. The
two feature views ("synthetic" and "synthetic_clip") weight the latent parts differently
and use their own projections and noise, so each carries information the other lacks.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter1d
from scipy.signal import lfilter

FEATURE_RATE = 1.875  # features per second (SlowFast: 32-frame windows, stride 16 at 30 fps)
VIDEO_FPS = 30.0  # canonical video frame rate (video_*_frame fields)


@dataclass(frozen=True)
class Verb:
    base: str  # query form and verb_x / verb_y slot ("pick")
    past: str  # "before I picked it"
    phrase: str  # "What tool did I <phrase>?"
    narrations: tuple[str, ...]  # EgoClip phrasings; {o} object, {p} place, {prep} on/in
    targets: frozenset[str] | None = None  # object categories or names it applies to; None = all


# Verbs the camera wearer performs. The first narration phrasing uses the same word as
# the queries ("puts" / "Where did I put ..."), later ones may use a synonym.
VERBS: tuple[Verb, ...] = (
    Verb("pick", "picked", "pick up", ("picks the {o} from the {p}", "picks up the {o}")),
    Verb("put", "put", "put down", ("puts the {o} {prep} the {p}", "places the {o} {prep} the {p}")),
    Verb("drop", "dropped", "drop", ("drops the {o} {prep} the {p}",)),
    Verb("hold", "held", "hold", ("holds the {o}", "holds the {o} in his hand")),
    Verb("move", "moved", "move", ("moves the {o} {prep} the {p}", "adjusts the {o} {prep} the {p}")),
    Verb("wash", "washed", "wash", ("washes the {o}", "rinses the {o} with water"),
         frozenset({"utensil", "food", "cleaning"})),
    Verb("cut", "cut", "cut", ("cuts the {o}", "cuts the {o} with a knife"),
         frozenset({"food", "paper", "tape"})),
    Verb("open", "opened", "open", ("opens the {o}",), frozenset({"container", "book", "notebook"})),
    Verb("close", "closed", "close", ("closes the {o}",), frozenset({"container", "book", "notebook"})),
    Verb("wipe", "wiped", "wipe", ("wipes the {o}", "cleans the {o} with a cloth"),
         frozenset({"utensil", "tool", "phone", "glasses", "remote"})),
)
VERB_INDEX = {v.base: i for i, v in enumerate(VERBS)}
PICK, PUT, DROP = (VERB_INDEX[n] for n in ("pick", "put", "drop"))
USE_VERBS = tuple(VERB_INDEX[n] for n in ("hold", "wash", "cut", "open", "close", "wipe"))
STANDALONE_VERBS = tuple(VERB_INDEX[n] for n in ("move", "open", "close", "wipe", "wash"))

# (name, category); the category is the X of "What X did I Y?".
OBJECTS: tuple[tuple[str, str], ...] = (
    ("scissors", "tool"), ("hammer", "tool"), ("screwdriver", "tool"), ("drill", "tool"),
    ("tape", "tool"), ("wrench", "tool"),
    ("knife", "utensil"), ("spoon", "utensil"), ("plate", "utensil"), ("bowl", "utensil"),
    ("cup", "utensil"), ("pan", "utensil"),
    ("apple", "food"), ("onion", "food"), ("carrot", "food"), ("bread", "food"), ("tomato", "food"),
    ("bottle", "container"), ("jar", "container"), ("box", "container"), ("bag", "container"),
    ("wallet", "container"),
    ("phone", "item"), ("keys", "item"), ("glasses", "item"), ("remote", "item"),
    ("towel", "cleaning"), ("sponge", "cleaning"), ("brush", "cleaning"),
    ("pen", "stationery"), ("book", "stationery"), ("notebook", "stationery"), ("paper", "stationery"),
)
# (name, preposition used with it)
PLACES: tuple[tuple[str, str], ...] = (
    ("table", "on"), ("counter", "on"), ("shelf", "on"), ("floor", "on"), ("stool", "on"),
    ("rack", "on"), ("drawer", "in"), ("sink", "in"), ("cabinet", "in"), ("basket", "in"),
)


def verb_applies(verb: int, obj: int) -> bool:
    targets = VERBS[verb].targets
    name, category = OBJECTS[obj]
    return targets is None or name in targets or category in targets


@dataclass(frozen=True)
class Activity:
    """One camera-wearer activity; times in seconds of the canonical video."""

    start: float
    end: float
    verb: int  # index into VERBS
    obj: int  # index into OBJECTS
    place: int  # index into PLACES


def sample_activities(rng: np.random.Generator, duration: float, *, objects_per_video: int,
                      places_per_video: int, activity_median_sec: float,
                      gap_sec: tuple[float, float]) -> list[Activity]:
    """A timeline of activities covering ``[0, duration]`` (sorted, non-overlapping)."""
    objs = rng.choice(len(OBJECTS), size=min(objects_per_video, len(OBJECTS)), replace=False)
    places = rng.choice(len(PLACES), size=min(places_per_video, len(PLACES)), replace=False)
    location = {int(o): int(rng.choice(places)) for o in objs}
    held, uses = None, 0
    acts: list[Activity] = []
    t = rng.uniform(2.0, 5.0)
    while True:
        if held is None:
            obj = int(rng.choice(objs))
            verb = PICK
            if rng.random() < 0.25:  # something done to an object without carrying it away
                options = [v for v in STANDALONE_VERBS if verb_applies(v, obj)]
                verb = int(rng.choice(options))
            else:
                held, uses = obj, 0
            place = location[obj]
        else:
            obj = held
            options = [v for v in USE_VERBS if verb_applies(v, obj)]
            if uses >= 3 or rng.random() < 0.5:
                verb = PUT if rng.random() < 0.8 else DROP
                others = [p for p in places if p != location[obj]] or list(places)
                location[obj] = int(rng.choice(others))
                held = None
            else:
                verb, uses = int(rng.choice(options)), uses + 1
            place = location[obj]
        # picking and putting are quick, using an object takes longer
        median = activity_median_sec * (0.7 if verb in (PICK, PUT, DROP) else 1.4)
        length = float(np.clip(rng.lognormal(np.log(median), 0.45), 2.0, 20.0))
        start = t + rng.uniform(*gap_sec)
        if start + length > duration - 2.0:
            return acts
        acts.append(Activity(round(start, 3), round(start + length, 3), verb, obj, place))
        t = start + length


def activity_at(acts: list[Activity], times: np.ndarray) -> np.ndarray:
    """Index of the activity covering each time, -1 where idle. ``times``: [T] -> [T]."""
    starts = np.array([a.start for a in acts] + [np.inf])
    ends = np.array([a.end for a in acts] + [-np.inf])
    idx = np.searchsorted(starts, times, side="right") - 1
    inside = (idx >= 0) & (times < ends[np.maximum(idx, 0)])
    return np.where(inside, idx, -1)


@dataclass(frozen=True)
class FeatureView:
    name: str  # feature-set folder name
    dim: int  # D
    weights: tuple[float, float, float]  # weights of the (verb, object, place) embeddings


class LatentFeatureModel:
    """Fixed random embeddings of verbs/objects/places + per-view projections.

    Everything fixed is drawn from ``seed`` alone, so a test can rebuild the same model and
    compare features with :meth:`activity_embedding`.
    """

    def __init__(self, *, seed: int, views: tuple[FeatureView, ...], latent_dim: int = 64,
                 noise: float = 2.0, scene_scale: float = 0.7, scene_steps: float = 150.0,
                 smooth_steps: float = 1.0):
        rng = np.random.default_rng([seed, 7001])
        self.views = views
        self.noise = noise  # std of the per-step, per-dim noise before smoothing
        self.scene_scale = scene_scale  # std of the drifting per-video scene component
        self.scene_rho = float(np.exp(-1.0 / scene_steps))  # AR(1) coefficient of the scene
        self.smooth_steps = smooth_steps  # std (in steps) of the temporal Gaussian smoothing
        self.verb_emb = rng.standard_normal((len(VERBS), latent_dim))
        self.obj_emb = rng.standard_normal((len(OBJECTS), latent_dim))
        self.place_emb = rng.standard_normal((len(PLACES), latent_dim))
        self.idle_emb = rng.standard_normal(latent_dim)
        self.proj = {v.name: rng.standard_normal((latent_dim, v.dim)) / np.sqrt(latent_dim)
                     for v in views}

    def _latent(self, view: FeatureView, verb: np.ndarray, obj: np.ndarray,
                place: np.ndarray) -> np.ndarray:
        wv, wo, wp = view.weights
        return wv * self.verb_emb[verb] + wo * self.obj_emb[obj] + wp * self.place_emb[place]

    def activity_embedding(self, view: str, verb: int, obj: int, place: int | None = None) -> np.ndarray:
        """The noiseless feature direction of an activity in one view: [D]. ``place=None``
        leaves the place part out (queries often do not name it)."""
        v = next(x for x in self.views if x.name == view)
        wv, wo, wp = v.weights
        lat = wv * self.verb_emb[verb] + wo * self.obj_emb[obj]
        if place is not None:
            lat = lat + wp * self.place_emb[place]
        return lat @ self.proj[view]

    def render(self, acts: list[Activity], start_sec: float, num_steps: int,
               rng: np.random.Generator) -> dict[str, np.ndarray]:
        """Features of the clip starting at ``start_sec`` (video time): {view: [T, D] float32}."""
        times = start_sec + (np.arange(num_steps) + 0.5) / FEATURE_RATE
        idx = activity_at(acts, times)
        active = idx >= 0
        pick = np.maximum(idx, 0)
        verb = np.array([a.verb for a in acts] + [0])[pick]  # the appended 0 serves idle steps
        obj = np.array([a.obj for a in acts] + [0])[pick]
        place = np.array([a.place for a in acts] + [0])[pick]
        out = {}
        for view in self.views:
            lat = self._latent(view, verb, obj, place)
            lat[~active] = self.idle_emb
            feat = lat @ self.proj[view.name]
            feat += self.scene_scale * self._scene(num_steps, view.dim, rng)
            feat += self.noise * rng.standard_normal(feat.shape)
            if self.smooth_steps > 0:
                feat = gaussian_filter1d(feat, self.smooth_steps, axis=0, mode="nearest")
            out[view.name] = feat.astype(np.float32)
        return out

    def _scene(self, num_steps: int, dim: int, rng: np.random.Generator) -> np.ndarray:
        """A stationary AR(1) process with unit variance: [T, D]."""
        rho = self.scene_rho
        drive = np.sqrt(1.0 - rho * rho) * rng.standard_normal((num_steps, dim))
        drive[0] /= np.sqrt(1.0 - rho * rho)  # start in the stationary distribution
        return lfilter([1.0], [1.0, -rho], drive, axis=0)  # x[k] = rho x[k-1] + drive[k]
