"""Our own recipe for the small bundled UniPixel: data, training and evaluation."""
