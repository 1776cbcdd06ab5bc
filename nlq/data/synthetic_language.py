"""Language for the synthetic NLQ data: EgoClip-style narrations and NLQ template queries.

Both are written from the same activities with the same words, so a model that learns
from narrations ("#C C puts the scissors on the drawer") also learns to answer queries
("Where did I put the scissors?"): the point of NaQ.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nlq.data.synthetic_world import OBJECTS, PICK, PLACES, PUT, VERBS, Activity

EGOCLIP_COLUMNS = ("clip_idx", "video_uid", "video_dur", "narration_source", "narration_ind",
                   "narration_time", "clip_start", "clip_end", "clip_text", "tag_verb", "tag_noun")
# tag_verb / tag_noun index these lists (the real file indexes Ego4D's taxonomies)
NARRATION_VERBS = tuple(v.base for v in VERBS) + ("look", "walk", "talk")
NARRATION_NOUNS = tuple(o for o, _ in OBJECTS) + tuple(p for p, _ in PLACES) + ("man", "woman")
_LOOK, _WALK, _TALK = (NARRATION_VERBS.index(n) for n in ("look", "walk", "talk"))
_NOUN_PLACE0 = len(OBJECTS)


@dataclass(frozen=True)
class Narration:
    time: float  # seconds of the canonical video
    text: str  # "#C C picks the scissors from the table"
    tag_verb: tuple[int, ...]  # indices into NARRATION_VERBS
    tag_noun: tuple[int, ...]  # indices into NARRATION_NOUNS


def _activity_text(verb: int, obj: int, place: int, phrasing: int, actor: str = "#C C") -> str:
    pname, prep = PLACES[place]
    body = VERBS[verb].narrations[phrasing].format(o=OBJECTS[obj][0], p=pname, prep=prep)
    return f"{actor} {body}"


def _gap_narration(rng: np.random.Generator, time: float, next_act: Activity | None,
                   objects_seen: list[int]) -> Narration:
    """Something said while the camera wearer is between activities (idle features)."""
    kind = int(rng.integers(4))
    if kind == 0 and next_act is not None:
        pname = PLACES[next_act.place][0]
        return Narration(time, f"#C C walks to the {pname}", (_WALK,), (_NOUN_PLACE0 + next_act.place,))
    if kind == 1 and objects_seen:  # someone else handles an object: no camera-wearer activity
        obj, place = int(rng.choice(objects_seen)), int(rng.integers(len(PLACES)))
        person = ("man", "woman")[int(rng.integers(2))]
        text = _activity_text(PICK, obj, place, 0, actor=f"#O A {person}")
        return Narration(time, text, (PICK,), (obj, _NOUN_PLACE0 + place))
    if kind == 2:
        person = ("man", "woman")[int(rng.integers(2))]
        return Narration(time, f"#O A {person} talks to C", (_TALK,), (NARRATION_NOUNS.index(person),))
    return Narration(time, "#C C looks around", (_LOOK,), ())


def narrate(rng: np.random.Generator, acts: list[Activity], duration: float, *,
            spacing_sec: float, gap_prob: float = 0.5) -> list[Narration]:
    """Narrations of a video, sorted by time: one per ``spacing_sec`` of each activity (the
    first with the query words, later ones may use a synonym), some in the idle gaps."""
    out: list[Narration] = []
    prev_end = 0.0
    for i, act in enumerate(acts + [None]):
        gap_end = act.start if act is not None else duration
        if gap_end - prev_end >= 2.5 and rng.random() < gap_prob:
            t = rng.uniform(prev_end + 0.6, gap_end - 0.6)
            seen = sorted({a.obj for a in acts[:i]})
            out.append(_gap_narration(rng, round(float(t), 3), act, seen))
        if act is None:
            break
        length = act.end - act.start
        n = max(1, int(round(length / spacing_sec)))
        for k in range(n):
            t = act.start + (k + rng.uniform(0.25, 0.75)) * length / n
            phrasing = 0 if k == 0 else int(rng.integers(len(VERBS[act.verb].narrations)))
            out.append(Narration(round(float(t), 3), _activity_text(act.verb, act.obj, act.place, phrasing),
                                 (act.verb,), (act.obj, _NOUN_PLACE0 + act.place)))
        prev_end = act.end
    return out


def egoclip_tsv(videos: list[tuple[str, float, list[Narration]]]) -> str:
    """The EgoClip TSV (header + one row per narration) of ``[(video_uid, video_dur,
    narrations)]``. Window = t +- beta_i / (2 alpha): beta_i the video's mean gap between
    narrations, alpha the mean of beta over all videos."""
    betas = [float(np.diff([n.time for n in narr]).mean()) if len(narr) > 1 else 0.0
             for _, _, narr in videos]
    alpha = float(np.mean([b for b in betas if b > 0])) if any(b > 0 for b in betas) else 1.0
    lines = ["\t".join(EGOCLIP_COLUMNS)]
    for (video_uid, duration, narrations), beta in zip(videos, betas):
        half = round((beta if beta > 0 else alpha) / (2.0 * alpha), 3)
        for ind, n in enumerate(narrations):
            row = (len(lines) - 1, video_uid, f"{duration:.3f}", "narration_pass_1", ind,
                   f"{n.time:.3f}", f"{n.time - half:.3f}", f"{n.time + half:.3f}", n.text,
                   str(list(n.tag_verb)), str(list(n.tag_noun)))
            lines.append("\t".join(str(x) for x in row))
    return "\n".join(lines) + "\n"


# --- NLQ queries -------------------------------------------------------------------------
T_PUT = "Place: Where did I put X?"
T_WHERE = "Objects: Where is object X?"
T_SEE = "Objects: In what location did I see object X ?"
T_BEFORE_AFTER = "Objects: Where is object X before / after event Y?"
T_PUT_IN = "Objects: What did I put in X?"
T_WHAT_X_Y = "Objects: What X did I Y?"
T_STATE = "Objects: State of an object"
TEMPLATE_WEIGHTS = {T_PUT: 3.0, T_BEFORE_AFTER: 1.0, T_WHERE: 1.5, T_SEE: 1.0, T_PUT_IN: 1.0,
                    T_WHAT_X_Y: 1.0, T_STATE: 1.0}
NA = "[verb_not_applicable]"


@dataclass(frozen=True)
class QuerySpec:
    template: str
    query: str
    slots: tuple[str, ...]  # (slot_x, verb_x) or (slot_x, verb_x, slot_y, verb_y)
    answer: int  # index of the answering activity in the clip's activity list


def _last(acts: list[Activity], keep) -> int | None:
    hits = [i for i, a in enumerate(acts) if keep(a)]
    return hits[-1] if hits else None


def candidate_queries(acts: list[Activity]) -> dict[str, list[QuerySpec]]:
    """Every query the clip supports, by template. ``acts``: the activities lying inside
    the clip, in time order; an answer is the LAST matching activity (asked at clip end)."""
    out: dict[str, list[QuerySpec]] = {t: [] for t in TEMPLATE_WEIGHTS}
    for obj in sorted({a.obj for a in acts}):
        o = OBJECTS[obj][0]
        put = _last(acts, lambda a: a.obj == obj and a.verb == PUT)
        if put is not None:
            out[T_PUT].append(QuerySpec(T_PUT, f"Where did I put the {o}?", (o, "put"), put))
        seen = _last(acts, lambda a: a.obj == obj)
        out[T_WHERE].append(QuerySpec(T_WHERE, f"Where was the {o}?", (o, NA), seen))
        out[T_SEE].append(QuerySpec(T_SEE, f"In what location did I see the {o}?", (o, NA), seen))
    for place in sorted({a.place for a in acts if a.verb == PUT}):
        pname, prep = PLACES[place]
        i = _last(acts, lambda a: a.place == place and a.verb == PUT)
        out[T_PUT_IN].append(QuerySpec(T_PUT_IN, f"What did I put {prep} the {pname}?", (pname, "put"), i))
    for verb, cat in sorted({(a.verb, OBJECTS[a.obj][1]) for a in acts}):
        v = VERBS[verb]
        i = _last(acts, lambda a: a.verb == verb and OBJECTS[a.obj][1] == cat)
        out[T_WHAT_X_Y].append(QuerySpec(T_WHAT_X_Y, f"What {cat} did I {v.phrase}?",
                                         (cat, NA, v.base, v.base), i))
    for verb, obj in sorted({(a.verb, a.obj) for a in acts if VERBS[a.verb].targets is not None}):
        v, o = VERBS[verb], OBJECTS[obj][0]
        i = _last(acts, lambda a: a.verb == verb and a.obj == obj)
        out[T_STATE].append(QuerySpec(T_STATE, f"Did I {v.base} the {o}?", (o, v.base), i))
    events = [(a.verb, a.obj) for a in acts]
    for i in range(len(acts) - 1):
        for answer, event, word in ((i, i + 1, "before"), (i + 1, i, "after")):
            ev = acts[event]
            if events.count(events[event]) != 1:  # the event Y must be unambiguous
                continue
            x, y = OBJECTS[acts[answer].obj][0], OBJECTS[ev.obj][0]
            what = "it" if x == y else f"the {y}"
            text = f"Where was the {x} {word} I {VERBS[ev.verb].past} {what}?"
            out[T_BEFORE_AFTER].append(QuerySpec(T_BEFORE_AFTER, text, (x, NA, y, VERBS[ev.verb].base),
                                                 answer))
    return out


def select_queries(rng: np.random.Generator, candidates: dict[str, list[QuerySpec]],
                   count: int) -> list[QuerySpec]:
    """Up to ``count`` queries with distinct texts; templates drawn by TEMPLATE_WEIGHTS."""
    pools = {t: list(c) for t, c in candidates.items() if c}
    chosen: list[QuerySpec] = []
    texts: set[str] = set()
    while pools and len(chosen) < count:
        names = list(pools)
        weights = np.array([TEMPLATE_WEIGHTS[t] for t in names])
        pool = pools[names[int(rng.choice(len(names), p=weights / weights.sum()))]]
        spec = pool.pop(int(rng.integers(len(pool))))
        if spec.query not in texts:
            texts.add(spec.query)
            chosen.append(spec)
        pools = {t: c for t, c in pools.items() if c}
    return chosen
