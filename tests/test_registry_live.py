"""The shipped descriptions hold for the live Keras models, and conv_id follows the tutorial's numbering."""
import re
from pathlib import Path

import keras
import pytest

from featurevis import registry, targets, zoo

# What the tutorial prints of conv_names, copied verbatim from its text (the file says from where).
TUTORIAL = Path(__file__).resolve().parent / "data" / "tutorial_printed.txt"

# Every conv_names entry the tutorial prints: its first five, the layer of each optimize_images call, its last five.
PRINTED = {0: "conv/Conv2D", 1: "conv_1/Conv2D", 2: "conv_2/Conv2D", 3: "conv_3/Conv2D", 4: "conv_4/Conv2D",
           5: "mixed/conv/Conv2D", 6: "mixed/tower/conv/Conv2D", 7: "mixed/tower/conv_1/Conv2D",
           8: "mixed/tower_1/conv/Conv2D", 9: "mixed/tower_1/conv_1/Conv2D", 10: "mixed/tower_1/conv_2/Conv2D",
           20: "mixed_2/tower/conv/Conv2D", 30: "mixed_4/conv/Conv2D", 40: "mixed_5/conv/Conv2D",
           50: "mixed_6/conv/Conv2D", 60: "mixed_7/conv/Conv2D", 70: "mixed_8/tower/conv/Conv2D",
           80: "mixed_9/tower_1/conv/Conv2D", 89: "mixed_10/tower_1/conv/Conv2D",
           90: "mixed_10/tower_1/conv_1/Conv2D", 91: "mixed_10/tower_1/mixed/conv/Conv2D",
           92: "mixed_10/tower_1/mixed/conv_1/Conv2D", 93: "mixed_10/tower_2/conv/Conv2D"}


def test_the_pinned_names_are_the_ones_the_tutorial_prints():
    text = TUTORIAL.read_text()
    printed = {int(conv_id): name for conv_id, name in
               re.findall(r"optimize_images\(conv_id=(\d+), num_iterations=\d+\)\nLayer: (\S+)", text)}
    first, last = (re.findall(r"'([^']+)'", re.search(pattern, text, re.S).group(1))
                   for pattern in (r"conv_names\[:5\]\n(\[.*?\])", r"conv_names\[-5:\]\n(\[.*?\])"))
    printed.update(enumerate(first))
    printed.update({89 + index: name for index, name in enumerate(last)})
    assert printed == PRINTED


@pytest.fixture(scope="module")
def inception():
    # Build once first so this process's Keras auto-names are shifted (conv2d_94, ...), as in a
    # worker that already holds a model: conv_ids and names must not move.
    keras.applications.InceptionV3(weights=None)
    return zoo.application("inception_v3", "InceptionV3", "untrained")


def test_conv_id_is_the_tutorials_conv_names_index(inception):
    info = registry.builtin_info("inception_v3")
    live = [found.layer for found in targets.conv_layers_in_creation_order(inception)]
    assert live[0].name != "conv2d"  # the names really were shifted
    blocks = _blocks_of(inception)
    for conv_id, printed in PRINTED.items():
        assert f"{info.conv_layers[conv_id].tutorial_name}/Conv2D" == printed
    for conv_id, described in enumerate(info.conv_layers):
        assert described.name == (f"conv2d_{conv_id}" if conv_id else "conv2d")
        # Read from the model: the layer sits in the block its tutorial name says (mixed_4 is Keras' mixed4).
        tutorial_block = described.tutorial_name.split("/")[0]
        expected = "stem" if not tutorial_block.startswith("mixed") else \
            "mixed" + (tutorial_block.split("_")[1] if "_" in tutorial_block else "0")
        assert blocks[live[conv_id].name] == expected, (conv_id, described.tutorial_name)
        assert live[conv_id].filters == described.channels


def test_every_description_layer_is_the_live_layer_at_its_position(inception):
    info = registry.builtin_info("inception_v3")
    spatial = targets.spatial_layers(inception)
    assert [layer.name for layer in info.layers] == zoo.fresh_process_names(inception, spatial)
    assert [found.layer.output.shape[-1] for found in spatial] == [layer.channels for layer in info.layers]
    assert tuple(inception.input_shape[1:]) == info.input_shape == (299, 299, 3)
    assert info.classes == 1000 and info.logits_layer == "predictions"
    assert zoo.live_target(inception, info, "mixed/conv") is inception.get_layer(live_name(inception, 5)).output


def live_name(model, conv_id):
    return targets.conv_layers_in_creation_order(model)[conv_id].layer.name


def _blocks_of(model) -> dict[str, str]:
    """Each Conv2D layer's block, from the graph: mixedN holds what feeds it and not mixed(N-1);
    the stem is what feeds every branch of mixed0."""
    def ancestors(layer) -> set[str]:
        seen, frontier = set(), [layer]
        while frontier:
            for node in frontier.pop()._inbound_nodes:
                for parent in node.parent_nodes:
                    if parent.operation.name not in seen:
                        seen.add(parent.operation.name)
                        frontier.append(parent.operation)
        return seen

    mixed = [model.get_layer(f"mixed{index}") for index in range(11)]
    branches = [ancestors(node.operation) | {node.operation.name} for node in mixed[0]._inbound_nodes[0].parent_nodes]
    blocks = {name: "stem" for name in set.intersection(*branches)}
    below: set[str] = set(blocks)
    for block in mixed:
        above = ancestors(block)
        blocks.update({name: block.name for name in above - below})
        below = above | {block.name}
    return blocks
