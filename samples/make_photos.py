"""Write the photo samples (photo_*.jpg) from the public-domain / CC0 images that scikit-image ships.

Maintainer script, not part of dcnviz: it needs scikit-image, which dcnviz does not depend on.
Run from the repository root: ``python samples/make_photos.py`` (see samples/README.md for the
versions used and each photo's source and licence).
"""
from pathlib import Path

import skimage.data
from PIL import Image

LONG_SIDE = 500
QUALITY = 85
# output name -> skimage.data function
PHOTOS = {"photo_astronaut": "astronaut", "photo_chelsea": "chelsea", "photo_coffee": "coffee",
          "photo_rocket": "rocket"}


def main() -> None:
    here = Path(__file__).resolve().parent
    for name, source in PHOTOS.items():
        image = Image.fromarray(getattr(skimage.data, source)())
        scale = LONG_SIDE / max(image.size)
        size = (round(image.width * scale), round(image.height * scale))
        # no EXIF or other metadata is written: the files hold pixels only
        image.resize(size, Image.Resampling.LANCZOS).save(here / f"{name}.jpg", quality=QUALITY, optimize=True)


if __name__ == "__main__":
    main()
