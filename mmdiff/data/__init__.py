"""Built-in and user data sets for every modality."""


class DataError(ValueError):
    """Data that cannot be used as asked, raised while building a data set (before training starts);
    the message names the path, what was found and what is accepted."""
