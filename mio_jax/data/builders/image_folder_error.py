"""The one error of a user's image folder that cannot become a dataset.

Raised by each step of preparing one (`folder_listing`, `hold_out_split`,
`image_file`), with the path and the fix in one line.
"""
from mio_jax import errors


class ImageFolderError(errors.UserError):
  """A folder of images that cannot be a dataset; names the path and fix."""
