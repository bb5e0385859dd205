from django.core.management.base import BaseCommand, CommandError, CommandParser

from images import apikeys


class Command(BaseCommand):
    help = f"Revoke an API key; other running workers stop accepting it within {apikeys.CACHE_SECONDS}s."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("name")

    def handle(self, *args, name: str, **options) -> None:
        if not apikeys.revoke_key(name):
            raise CommandError(f"no active key named {name!r}")
        self.stdout.write(f"Revoked API key {name!r}.")
