"""An AI agent's side of a release, through the Python MCP SDK (PyPI `mcp`) talking to
`rampart mcp` over stdio: list the tools, start a release, watch it reach its approval
point, try to approve (and be refused, with what to do instead), ask the humans for an
approval, then watch the release promoted once a human approved.

Usage: mcp_agent.py RAMPART_EXE SERVER_URL POLICY_FILE
The agent token is in RAMPART_TOKEN. Prints `WAITING <release> <handle>` once it asked
for the approval, then reads one line on stdin (the human approved), and prints
`PROMOTED <release>` at the end. Any failed expectation exits non-zero.
"""

import asyncio
import json
import os
import sys

from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client


def structured(result):
    if result.structured_content is not None:
        return result.structured_content
    return json.loads(result.content[0].text)


async def until(session, release, done, limit_s=120):
    for _ in range(limit_s * 10):
        status = structured(await session.call_tool("release_status", {"release": release}))
        if done(status):
            return status
        await asyncio.sleep(0.1)
    raise AssertionError(f"release {release} never got there; last seen {status}")


async def main():
    exe, server, policy = sys.argv[1:4]
    params = StdioServerParameters(
        command=exe,
        args=["mcp", "--server", server],
        env={"RAMPART_TOKEN": os.environ["RAMPART_TOKEN"]},
    )
    async with stdio_client(params) as (read, write):
        async with ClientSession(read, write) as session:
            await session.initialize()
            names = {t.name for t in (await session.list_tools()).tools}
            for needed in ["start_release", "release_status", "approve_release", "request_approval", "pause_release", "freeze_releases"]:
                assert needed in names, f"{needed} not in {names}"

            # A changed policy, or naming the stable version, is refused to an agent.
            changed = await session.call_tool("start_release", {"policy": open(policy).read() + "\n# tweak\n", "version": "v2"})
            assert changed.is_error and structured(changed)["error"]["code"] == "forbidden", structured(changed)
            named = await session.call_tool("start_release", {"file": policy, "version": "v2", "stable": "v0"})
            assert named.is_error and structured(named)["error"]["code"] == "forbidden", structured(named)

            started = await session.call_tool("start_release", {"file": policy, "version": "v2"})
            assert not started.is_error, structured(started)
            release = structured(started)["id"]

            await until(session, release, lambda s: s.get("phase") == "awaiting_approval")

            refused = await session.call_tool("approve_release", {"release": release, "reason": "looks fine"})
            assert refused.is_error, "an agent's approval went through"
            error = structured(refused)["error"]
            assert error["code"] == "forbidden", error
            assert "request_approval" in error["instead"], error
            assert "approver" in error["message"], error

            asked = await session.call_tool("request_approval", {"release": release, "reason": "canary healthy at 20 %"})
            assert not asked.is_error, structured(asked)
            handle = structured(asked)["handle"]
            print(f"WAITING {release} {handle}", flush=True)
            sys.stdin.readline()

            final = await until(session, release, lambda s: s.get("outcome") is not None)
            assert final["outcome"] == "promoted", final
            print(f"PROMOTED {release}", flush=True)


asyncio.run(main())
