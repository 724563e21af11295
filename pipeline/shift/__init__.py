"""Distribution shift between train, public and private: image properties, two-sample tests, plots."""
