"""Generated images with known anomaly masks, so that training and tests need no downloaded data.

Three scenes, one module each: `bottles` (bottle bottoms with broken rims, contamination, scratches),
`notes` (handwritten-notes pages with highlighter strokes) and `sea` (aerial sea with sharks); the
folders they fill are written once, atomically, by `folder_writer`. Real masks are hand-drawn and
approximate; these are exact: every scene draws its anomaly last, from a generator of its own, and
paints only inside the mask. Same seed, same bytes.
"""

from anomaly_lab.data.synthetic.bottles import BOTTLE_DEFECTS, make_bottle, write_synthetic_bottles
from anomaly_lab.data.synthetic.folder_writer import write_atomically, write_pages
from anomaly_lab.data.synthetic.notes import make_notes_page, write_notes_pages
from anomaly_lab.data.synthetic.sea import make_sea_image, write_sea_pages

__all__ = [
    "BOTTLE_DEFECTS",
    "make_bottle",
    "make_notes_page",
    "make_sea_image",
    "write_atomically",
    "write_notes_pages",
    "write_pages",
    "write_sea_pages",
    "write_synthetic_bottles",
]
