"""One synthetic clip: a world, a camera path over it and the queries asked about it
(no pixels are kept; frames are rendered on demand by render.py)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vq2d.data.synthetic.camera import CameraPath, order_visits, plan_camera
from vq2d.data.synthetic.scenes import Scene, build_scene
from vq2d.data.synthetic.sightings import QueryPlan, Visibility, choose_query, measure_visibility

FRAMES_PER_QUERY = 14  # a clip of T frames holds at most T // 14 query objects (two visits each)


@dataclass
class SyntheticClip:
    scene: Scene
    camera: CameraPath
    visibility: Visibility
    annotations: list[list[QueryPlan]]   # per annotation, its query sets in order "1", "2", ...

    @property
    def num_frames(self) -> int:
        return len(self.camera)


def _visit_targets(rng: np.random.Generator, scene: Scene, query_labels: list[int]) -> np.ndarray:
    """World points the camera looks at, in order: float ``[K, 2]``.

    Intended query objects are visited two or three times, look-alikes and other objects
    now and then, sometimes an empty place."""
    counts: dict[int, int] = {}
    for obj in scene.objects:
        if obj.label in query_labels:
            counts[obj.label] = 2 + int(rng.random() < 0.3)
        else:
            counts[obj.label] = int(rng.random() < (0.5 if obj.imitates is not None else 0.25))
    points = {obj.label: np.array(obj.center) for obj in scene.objects}
    for i in range(max(int(rng.integers(0, 2)), 2 - sum(counts.values()))):
        points[-(i + 1)] = rng.uniform((0, 0), scene.size)
        counts[-(i + 1)] = 1
    order = order_visits(rng, counts, points, reach=0.3 * max(scene.size))
    return np.array([points[key] for key in order])


def synthesize_clip(rng: np.random.Generator, *, frame_size: tuple[int, int], frames_per_clip: tuple[int, int],
                    annotations_per_clip: tuple[int, int], query_sets_per_annotation: tuple[int, int],
                    clutter_objects: tuple[int, int], distractor_prob: float, world_scale: float,
                    object_size: tuple[float, float], zoom_range: tuple[float, float], max_roll_deg: float,
                    shake_px: float, blur_prob: float, max_tries: int = 4) -> SyntheticClip:
    """Plan one clip: world, camera and queries (see PRESETS in generate.py for the arguments).

    The number of query sets actually found can be lower than planned when the camera path
    does not show an object twice; the path is re-drawn up to ``max_tries`` times."""
    frame_size = (int(frame_size[0]), int(frame_size[1]))
    num_frames = int(rng.integers(frames_per_clip[0], frames_per_clip[1] + 1))
    sizes = [int(rng.integers(query_sets_per_annotation[0], query_sets_per_annotation[1] + 1))
             for _ in range(int(rng.integers(annotations_per_clip[0], annotations_per_clip[1] + 1)))]
    while sum(sizes) > max(1, num_frames // FRAMES_PER_QUERY):  # too many queries for the clip length
        sizes = sizes[:-1] if len(sizes) > 1 else [sizes[0] - 1]
    num_queries = sum(sizes)
    world_size = (round(world_scale * frame_size[0]), round(world_scale * frame_size[1]))
    long_side = (object_size[0] * frame_size[1], object_size[1] * frame_size[1])
    scene = build_scene(rng, world_size,
                        num_objects=num_queries + int(rng.integers(clutter_objects[0], clutter_objects[1] + 1)),
                        num_distractors=int(rng.binomial(num_queries, distractor_prob)),
                        object_long_side=long_side, view_margin=0.1 * frame_size[1],
                        texture_scale=frame_size[1] / 240)
    intended = [o.label for o in scene.objects if o.imitates is None][:num_queries]
    others = [o.label for o in scene.objects if o.label not in intended]
    best = None
    for _ in range(max_tries):
        camera = plan_camera(rng, _visit_targets(rng, scene, intended), num_frames, frame_size, world_size,
                             zoom_range=zoom_range, max_roll_deg=max_roll_deg, shake_px=shake_px,
                             blur_prob=blur_prob)
        visibility = measure_visibility(scene, camera)
        candidates = intended + [others[i] for i in rng.permutation(len(others))]
        plans: list[QueryPlan] = []
        for label in candidates:
            if len(plans) == num_queries:
                break
            plan = choose_query(rng, visibility, camera, label)
            if plan is not None:
                plans.append(plan)
        if best is None or len(plans) > len(best[2]):
            best = (camera, visibility, plans)
        if len(plans) == num_queries:
            break
    camera, visibility, plans = best
    annotations, start = [], 0
    for size in sizes:
        if plans[start:start + size]:
            annotations.append(plans[start:start + size])
        start += size
    return SyntheticClip(scene=scene, camera=camera, visibility=visibility, annotations=annotations)
