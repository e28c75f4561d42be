"""Hook implementations: a few lines that register specs. No torch import here."""

from difframe import hookimpl


@hookimpl
def register_attention_processor(register):
    register(
        name="query-chunks",
        factory="difframe_plugin_template.chunked:QueryChunkedBackend",
        aliases=("chunked",),
        priority=-1,  # never chosen by attention="auto"; ask for it by name
        description="attention for chunk_size query tokens at a time: less peak memory, same result",
    )
