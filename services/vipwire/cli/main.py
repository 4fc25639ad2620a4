def main() -> None:
    print("vipwire")
