from dcnviz.cli import run

run()
