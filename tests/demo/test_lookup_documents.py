"""Stage 1's caption documents refer back: a line listing the background and the emoji, then the caption naming
them, so the frozen LLM of alignment has learned to take a caption's words from what came before."""

from mm_lightning.demo.corpora import lookup_document
from mm_lightning.demo.emoji_scenes import SceneConfig, emoji_name, generate_scene


def test_the_list_names_exactly_what_the_caption_names_in_a_seeded_order() -> None:
    orders = set()
    for index in range(40):
        scene = generate_scene(SceneConfig(), "train", index)
        listed, caption = lookup_document(scene, index).split("\n")
        words = listed.split(", ")
        assert caption == scene.caption
        assert sorted(words) == sorted([scene.background, *(emoji_name(s) for s in scene.sprites)])
        assert all(word in caption for word in words)  # every listed word can be copied into the caption
        assert lookup_document(scene, index) == f"{listed}\n{caption}"  # deterministic
        orders.add(words[0] == scene.background)
    assert orders == {True, False}  # the background is not always first: the order carries no position cue
