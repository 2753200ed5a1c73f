"""Your own model, as most people make one: a trained backbone nested as one layer, fine-tuned with a new head.

    .venv/bin/python examples/save_a_model.py my_model.keras
    .venv/bin/python -m producer models register my-model --file my_model.keras --class-names examples/shapes.txt
    .venv/bin/python -m producer models show my-model
    .venv/bin/python -m producer enqueue --model my-model --layer shapes_backbone/conv3 --feature 3 --method robust \
        --iterations 100 --wait

This is Keras' transfer-learning recipe: freeze a trained convolutional base, call it as one layer of a new
model, train a new head, then fine-tune the whole at a low learning rate. People usually take a Keras
Application with ImageNet weights as the base (`keras.applications.MobileNetV2(include_top=False,
weights="imagenet")`); these machines cannot download weights, so the base here is the repository's own
trained shapes_cnn up to its last convolutional block (its weights ship in featurevis/models/). The new model
takes 0..255 pixels and rescales them itself, so registration finds the Rescaling layer and serves it with
`--preprocess none`; every layer of the base is a target by its path (`shapes_backbone/conv3`).
"""
import sys

import keras

from featurevis import registry, shapes, zoo


def trained_backbone() -> keras.Model:
    """A trained convolutional base: shapes_cnn up to its last block, as one model of its own."""
    trained = zoo.ARCHITECTURES["shapes_cnn"](str(registry.shipped_weights_file("shapes_cnn")))
    return keras.Model(trained.input, trained.get_layer("bn4").output, name="shapes_backbone")


def fine_tuned(base: keras.Model) -> keras.Model:
    pixels = keras.Input((shapes.SIZE, shapes.SIZE, 3))
    x = keras.layers.Rescaling(1 / 255)(pixels)  # the model takes 0..255 pixels itself
    x = base(x, training=False)  # the base's BatchNormalization stays in inference mode while fine-tuning
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dropout(0.2)(x)
    return keras.Model(pixels, keras.layers.Dense(len(shapes.CLASS_NAMES), activation="softmax")(x))


def train(model: keras.Model, base: keras.Model) -> None:
    images, labels = shapes.generate(2000, seed=11)
    base.trainable = False  # first the new head alone
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="sparse_categorical_crossentropy")
    model.fit(images, labels, epochs=2, batch_size=64, verbose=0)
    base.trainable = True  # then everything, gently
    model.compile(optimizer=keras.optimizers.Adam(1e-4), loss="sparse_categorical_crossentropy")
    model.fit(images, labels, epochs=1, batch_size=64, verbose=0)


if __name__ == "__main__":
    keras.utils.set_random_seed(0)
    backbone = trained_backbone()
    model = fine_tuned(backbone)
    train(model, backbone)
    model.save(sys.argv[1] if len(sys.argv) > 1 else "my_model.keras")
