"""The shipped model descriptions hold for the live Keras models."""
import keras

from featurevis import catalog, zoo


def test_description_matches_the_live_model_even_after_other_builds():
    # Build once first so this process's Keras auto-names are shifted (conv2d_94, ...),
    # as in a worker that already holds a model: the catalog names must not move.
    keras.applications.InceptionV3(weights=None)
    model = zoo.ARCHITECTURES["inception_v3"].build(None)
    info = catalog.get("inception_v3")
    layers = zoo.conv_layers_in_graph_order(model)
    assert layers[0].name != "conv2d"  # the names really were shifted
    assert [(layer.name, layer.channels) for layer in info.conv_layers] == \
        [(name, layer.filters) for name, layer in zip(zoo.fresh_process_names(layers), layers)]
    assert tuple(model.input_shape[1:]) == info.input_shape == (299, 299, 3)
    assert model.output_shape[-1] == info.classes == 1000
    assert info.conv_layers[5].name == "conv2d_8" and info.conv_layers[92].name == "conv2d_85"
