"""validate: check all of params.yaml and dataset.yaml before any other stage runs.

DVC deletes a stage's outputs just before running it, so a bad value found inside, say,
the train stage would cost the last good model and metrics. Every stage depends on this
one's output, so DVC runs it first and stops here on any error. The output's content
never changes, so a valid edit reruns only the stages whose params changed.
"""

from mnistpipe import paths
from mnistpipe.atomic import write_text
from mnistpipe.errors import exit_on_user_error
from mnistpipe.params import check_fits, load_dataset, load_params


@exit_on_user_error
def main() -> None:
    check_fits(load_params(), load_dataset())
    write_text(paths.PARAMS_VALID, "params.yaml and dataset.yaml are valid\n")


if __name__ == "__main__":
    main()
