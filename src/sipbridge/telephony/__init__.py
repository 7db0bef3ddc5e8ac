"""The telephony domain: pure functions over trunks, dispatch rules, calls and participants."""
