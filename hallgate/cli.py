def main(argv=None):
    print("hallgate")
