"""Items, the image store, image properties, the split, augmentation and the tf.data streams."""
