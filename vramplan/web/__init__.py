"""The local web planner (`vramplan serve`, extra `web`): a starlette app serving one page and a JSON API."""
