from dcnviz.cli import main

main()
