"""report: figures and reports/report.md from the data, model, metrics and plots; the work
is mnistpipe.pipeline.report.run."""

from mnistpipe.errors import exit_on_user_error
from mnistpipe.params import load_params


@exit_on_user_error
def main() -> None:
    params = load_params()
    from mnistpipe.pipeline import report  # torch loads here, not when the stage is imported

    report.run(params)


if __name__ == "__main__":
    main()
