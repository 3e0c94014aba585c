"""fetch: download the dataset's IDX files into data/raw/, each verified by checksum."""

from mnistpipe import paths
from mnistpipe.data.fetch import fetch_dataset
from mnistpipe.errors import exit_on_user_error
from mnistpipe.params import load_dataset, load_params


@exit_on_user_error
def main() -> None:
    params = load_params()
    fetch_dataset(load_dataset(), params.data, paths.RAW)


if __name__ == "__main__":
    main()
