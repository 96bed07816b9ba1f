"""The built-in coordination strategies, one module each (registered in
`latis.strategies`; the interface is `latis_core._plugins.strategy`), and the
helpers they share (`common`)."""
