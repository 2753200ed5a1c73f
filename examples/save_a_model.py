"""A user's own model, as a user would make one: a small Keras CNN, trained briefly, saved as .keras.

    .venv/bin/python examples/save_a_model.py my_cnn.keras
    .venv/bin/python -m producer models register my-cnn --file my_cnn.keras --preprocess none \
        --class-names examples/shapes.txt
    .venv/bin/python -m producer enqueue --model my-cnn --layer block2 --feature 3 --method robust --iterations 100 --wait

It learns the repository's synthetic shapes (featurevis/shapes.py) for a few seconds, so its
pictures show something; any model saved with `model.save("name.keras")` registers the same way.
"""
import sys

import keras

from featurevis import shapes


def small_cnn() -> keras.Model:
    pixels = keras.Input((64, 64, 3))
    x = keras.layers.Rescaling(1 / 255)(pixels)  # it takes 0..255 pixels itself: register with --preprocess none
    for index, channels in enumerate((16, 32), start=1):
        x = keras.layers.Conv2D(channels, 3, padding="same", activation="relu", name=f"block{index}")(x)
        x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(pixels, keras.layers.Dense(len(shapes.CLASS_NAMES), activation="softmax")(x))


if __name__ == "__main__":
    keras.utils.set_random_seed(0)
    model = small_cnn()
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    images, labels = shapes.generate(3000, seed=11)
    model.fit(images, labels, epochs=3, batch_size=64, verbose=0)
    model.save(sys.argv[1] if len(sys.argv) > 1 else "my_cnn.keras")
