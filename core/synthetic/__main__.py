from core.synthetic.cli import main

main()
