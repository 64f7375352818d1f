from fewclip.cli import main

main()
