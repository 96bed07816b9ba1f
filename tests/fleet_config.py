"""A big config for fleet tests and benchmarks/load.py: `fleet_config(5000)`."""

from __future__ import annotations

__all__ = ["fleet_config"]


def fleet_config(n: int, port: int = 17447) -> str:
    """A config of `n` units, a third each: `p<i>` started by the process provisioner
    (echo, `delay = i % 7`), `d<i>` dialed over tcp at `10.x.y.z:7000+i`, `a<i>`
    dialing in over TLS on one listener that they share (`port`)."""
    out = ["[daemon]\nhandshake_timeout = 5.0\n"]
    for i in range(n):
        if i % 3 == 0:
            out.append(
                f'[units.p{i}]\nagent_options = {{ delay = "{i % 7}" }}\n'
                f'[units.p{i}.provisioner]\ntype = "process"\n'
            )
        elif i % 3 == 1:
            out.append(
                f'[units.d{i}]\n[units.d{i}.dial]\ntype = "tcp"\n'
                f'host = "10.{i // 65536}.{i // 256 % 256}.{i % 256}"\nport = {7000 + i}\n'
            )
        else:
            out.append(
                f'[units.a{i}]\n[[units.a{i}.accept]]\ntype = "tcp"\nport = {port}\ntls = true\n'
            )
    return "\n".join(out)
