"""Captions of synthetic-world scenes, generated from the scene dict (see world_scene).

Dense: "A large red ball falls and bounces on a blue-to-white gradient background while a small
green square moves left; the camera pans right." Short: the subject's colour and shape,
"a red ball". Every object's size, colour, shape and motion is named in the dense caption.
"""

from __future__ import annotations

from data_pipelines.world_scene import Scene


def _noun(obj: dict) -> str:
    return f"{obj['size']} {obj['color']} {obj['shape']}"


def motion_phrase(obj: dict) -> str:
    """What an object does, as a verb phrase ("moves left", "falls and bounces")."""
    motion = obj["motion"]
    kind = motion["kind"]
    phrases = {"still": "stays still", "fall": "falls and bounces", "grow": "grows",
               "shrink": "shrinks"}
    if kind in phrases:
        return phrases[kind]
    if kind == "move":
        return f"moves {motion['direction']}"
    if kind == "rotate":
        return f"rotates {motion['direction']}"
    raise ValueError(f"unknown motion kind {kind!r} in object {obj}")


def background_phrase(scene: Scene) -> str:
    """The background as a noun phrase ("a blue-to-white gradient background")."""
    background = scene["background"]
    names = [c["name"] for c in background["colors"]]
    if background["kind"] == "gradient":
        return f"a {names[0]}-to-{names[1]} gradient background"
    return f"a {names[0]} background"


def _clause(scene: Scene, index: int, article: str) -> str:
    objects = scene["objects"]
    clause = f"{article} {_noun(objects[index])} {motion_phrase(objects[index])}"
    occlusion = scene["occlusion"]
    if occlusion is not None and occlusion["occluded"] == index:
        clause += f" and passes behind a {_noun(objects[occlusion['occluder']])}"
    return clause


def dense_caption(scene: Scene) -> str:
    """One sentence naming every object (size, colour, shape, motion), background and camera."""
    occlusion = scene["occlusion"]
    occluder = occlusion["occluder"] if occlusion else None
    others = [_clause(scene, i, "the" if i == occluder else "a")
              for i in range(1, len(scene["objects"]))]
    first = _clause(scene, 0, "a")
    text = f"{first[0].upper()}{first[1:]} on {background_phrase(scene)}"
    if others:
        text += " while " + " and ".join(others)
    if scene["camera"]["pan"] != "none":
        text += f"; the camera pans {scene['camera']['pan']}"
    return text + "."


def short_caption(scene: Scene) -> str:
    """The clip's subject by colour and shape ("a red ball")."""
    subject = scene["objects"][0]
    return f"a {subject['color']} {subject['shape']}"
