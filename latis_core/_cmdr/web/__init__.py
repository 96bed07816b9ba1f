"""The web dashboard that cmdr serves (`latis web`, `[web]` in config): docs/web.md.

The parts, each imported only when used (the daemon imports none of them
until the dashboard starts, and the CLI none at all):

- `config`: the `[web]` table (`WebConfig`), read with the rest of the config;
- `auth`: the token (a 0600 file), the cookie and CSRF values derived from it,
  and the check every request passes before anything is served;
- `events`: the controller's events fanned out to each browser's event stream;
- `app`: the Starlette application: the page, its static files, the JSON API;
- `server`: hypercorn's trio worker, run in the daemon's own nursery.
"""
