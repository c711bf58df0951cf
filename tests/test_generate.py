"""layer.yaml generate: a build-host tool (Hugo) turns a folder of a layer's
rendered templates and files into files of the host's image, at plan, render
and build time alike; every mistake is one line."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from builder import preflight
from builder.content import generate
from builder.content.hostlayer import host_delta, standin_facts
from builder.content.render import Rendered, render_host
from builder.errors import BuildError
from builder.inventory.config import load_inventory
from builder.inventory.layers import load_layers
from builder.plan import plan_hosts
from tests.conftest import REPO, write
from tests.test_config import run_cli

WEB_YAML = "description: demo role\nrequires: [base]\nhook_vars: [web_port]\n"
GENERATE = "generate:\n  - tool: hugo\n    source: /srv/site\n    dest: /var/www/site\n"
SOURCE = "layers/web/generate: hugo /srv/site"

SITE = {
    "templates/srv/site/config.toml.j2":
        '# {{ pibake_managed }}\nbaseURL = "http://{{ host.fqdn }}/"\n'
        'title = "{{ cluster.name }}"\ndisableKinds = ["taxonomy", "term", "RSS", "sitemap"]\n',
    "templates/srv/site/content/_index.md.j2":
        '---\ntitle: "{{ cluster.name }}"\n---\n<!-- {{ pibake_managed }} -->\n\n'
        "{% for n in nodes %}- {{ n.name }} at {{ n.ip }}\n{% endfor %}",
    "templates/srv/site/layouts/index.html.j2":
        "<!-- {{ pibake_managed }} -->\n<html><head><title>{{ '{{ .Site.Title }}' }}</title>"
        "</head>\n<body>{{ '{{ .Content }}' }}</body></html>\n",
    "files/srv/site/static/site.css": "h1 { color: teal }\n",
}


@pytest.fixture
def site(mini: Path) -> Path:
    """The mini project whose web layer renders a Hugo site and builds it."""
    for rel, text in SITE.items():
        write(mini / "layers/web" / rel, text)
    write(mini / "layers/web/layer.yaml", WEB_YAML + GENERATE)
    return mini


def generated(project: Path, host: str = "node-01") -> list[Rendered]:
    return [r for r in render_host(load_inventory(project), host) if r.generated]


def test_the_site_is_built_into_the_hosts_rendered_files(site: Path) -> None:
    made = generated(site)
    assert [(r.dest, r.mode, r.layer, r.source, r.owner, r.secrets) for r in made] == [
        ("/var/www/site/index.html", 0o644, "web", SOURCE, "", ()),
        ("/var/www/site/site.css", 0o644, "web", SOURCE, "", ()),   # from files/
    ]
    page = made[0].data.decode()
    assert "<title>mini</title>" in page
    assert "<li>node-01 at 192.168.77.15</li>" in page
    assert "<li>node-02 at 192.168.77.16</li>" in page
    assert 'name="generator"' not in page            # no Hugo version in the page
    assert made[1].data == b"h1 { color: teal }\n"


def test_two_renders_give_the_same_bytes_whatever_the_callers_environment(
        site: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = generated(site)
    # Hugo reads HUGO_* settings from its environment; the generator's is its own.
    monkeypatch.setenv("HUGO_BASEURL", "http://elsewhere/")
    monkeypatch.setenv("HUGO_DISABLEHUGOGENERATORINJECT", "false")
    monkeypatch.setenv("TZ", "Pacific/Auckland")
    assert generated(site) == first


def test_render_plan_and_the_host_layer_carry_the_output(
        site: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(capsys, "-C", str(site), "render", "node-01", "--to",
                             str(tmp_path / "review"))
    assert (code, err) == (0, "")
    assert "<li>node-02 at 192.168.77.16</li>" in \
        (tmp_path / "review/var/www/site/index.html").read_text()
    code, out, err = run_cli(capsys, "-C", str(site), "plan", "node-01")
    assert "    file    0644 0:0  /var/www/site/index.html" in out.splitlines()
    plan = plan_hosts(load_inventory(site), ("node-01",))[0]
    written = {e.path: e for e in host_delta(plan, standin_facts(plan)).root}
    entry = written["/var/www/site/index.html"]
    assert (entry.kind, entry.mode, entry.uid, entry.gid) == ("file", 0o644, 0, 0)
    code, out, err = run_cli(capsys, "-C", str(site), "check", "--inventory-only")
    assert (code, out, err) == (0, "ok: 2 hosts, 2 layers, 16 templates rendered, 4 files "
                                "generated, 2 configs passed their daemon's checker\n", "")


def test_generate_is_not_part_of_the_role(site: Path, edit: Callable[..., Path]) -> None:
    """generate: runs in the host stage: adding or editing it never rebuilds a role."""
    with_it = load_layers(site)["web"].build_hash
    edit(site / "layers/web/layer.yaml", WEB_YAML)
    assert load_layers(site)["web"].build_hash == with_it
    edit(site / "layers/web/layer.yaml", WEB_YAML + GENERATE.replace("/var/www/site", "/x"))
    assert load_layers(site)["web"].build_hash == with_it


Y = "layers/web/layer.yaml"
BAD: list[tuple[str, str, str]] = [
    # (id, generate: block of layers/web/layer.yaml, expected error line)
    ("not-a-list", "generate: {tool: hugo}\n",
     f"{Y}: generate: expected a list of entries like {{tool: hugo, source: /srv/site, "
     "dest: /var/www/site}, got {'tool': 'hugo'}"),
    ("unknown-key", "generate:\n  - {tool: hugo, source: /srv/site, dest: /w, args: -D}\n",
     f"{Y}: generate[0].args: unknown key (known: dest, source, tool)"),
    ("unknown-tool", "generate:\n  - {tool: jekyll, source: /srv/site, dest: /w}\n",
     f"{Y}: generate[0].tool: unknown tool 'jekyll' (known: hugo); use one of these"),
    ("tool-typo", "generate:\n  - {tool: hgo, source: /srv/site, dest: /w}\n",
     f"{Y}: generate[0].tool: unknown tool 'hgo' (known: hugo); did you mean 'hugo'?"),
    ("missing-tool", "generate:\n  - {source: /srv/site, dest: /w}\n",
     f"{Y}: generate[0].tool: missing; name the tool, e.g. tool: hugo (known: hugo)"),
    ("missing-source", "generate:\n  - {tool: hugo, dest: /w}\n",
     f"{Y}: generate[0].source: missing; the folder of this layer's templates or files to "
     "build, e.g. source: /srv/hugo/site"),
    ("missing-dest", "generate:\n  - {tool: hugo, source: /srv/site}\n",
     f"{Y}: generate[0].dest: missing; the folder the output goes to in the image, e.g. "
     "dest: /var/www/site"),
    ("relative-source", "generate:\n  - {tool: hugo, source: srv/site, dest: /w}\n",
     f"{Y}: generate[0].source: 'srv/site' is not an absolute path in the image; write it as "
     "'/srv/site'"),
    ("dotdot-dest", "generate:\n  - {tool: hugo, source: /srv/site, dest: /var/../etc}\n",
     f"{Y}: generate[0].dest: '/var/../etc' is not a plain folder path; write it without '.', "
     "'..' or '//', below /, e.g. /srv/site"),
    ("root-dest", "generate:\n  - {tool: hugo, source: /srv/site, dest: /}\n",
     f"{Y}: generate[0].dest: '/' is not a plain folder path; write it without '.', '..' or "
     "'//', below /, e.g. /srv/site"),
    ("no-files-under-source", "generate:\n  - {tool: hugo, source: /srv/sit, dest: /w}\n",
     f"{Y}: generate[0].source: no file of this layer's templates/ or files/ lies under "
     "/srv/sit; did you mean '/srv/site'?"),
    ("nothing-near-source", "generate:\n  - {tool: hugo, source: /opt/blog, dest: /w}\n",
     f"{Y}: generate[0].source: no file of this layer's templates/ or files/ lies under "
     "/opt/blog; name a folder that holds some"),
    ("dest-inside-source", "generate:\n  - {tool: hugo, source: /srv/site, dest: "
     "/srv/site/public}\n",
     f"{Y}: generate[0].dest: /srv/site/public overlaps the source /srv/site (one holds the "
     "other); give the output a folder outside it"),
    ("dest-around-source", "generate:\n  - {tool: hugo, source: /srv/site, dest: /srv/}\n",
     f"{Y}: generate[0].dest: /srv overlaps the source /srv/site (one holds the other); give "
     "the output a folder outside it"),
    ("second-entry", GENERATE + "  - {tool: hugo, source: /srv/site}\n",
     f"{Y}: generate[1].dest: missing; the folder the output goes to in the image, e.g. "
     "dest: /var/www/site"),
]


@pytest.mark.parametrize("case", BAD, ids=[c[0] for c in BAD])
def test_bad_generate_entry_one_clear_line(site: Path, capsys: pytest.CaptureFixture[str],
                                           case: tuple[str, str, str]) -> None:
    _, block, expected = case
    write(site / Y, WEB_YAML + block)
    code, out, err = run_cli(capsys, "-C", str(site), "check", "--inventory-only")
    assert (code, out, err) == (2, "", f"pibake: error: {expected}\n")


def test_a_site_hugo_refuses_is_one_line_before_anything_is_built(
        site: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("PIBAKE_CACHE", str(tmp_path / "cache"))
    layout = site / "layers/web/templates/srv/site/layouts/index.html.j2"
    layout.write_text(layout.read_text().replace(".Site.Title", ".Site.Nope"))
    checked = run_cli(capsys, "-C", str(site), "check", "--inventory-only")
    built = run_cli(capsys, "-C", str(site), "build", "--all")
    assert built == checked
    code, out, err = checked
    assert (code, out) == (2, "")
    prefix = ("pibake: error: node-01: layers/web/layer.yaml: generate[0] (hugo /srv/site): "
              "hugo failed: ")
    assert err.startswith(prefix) and err.count("\n") == 1
    # Hugo's own words, with the file as the image would hold it, and the template behind it
    assert '"/srv/site/layouts/index.html:2:' in err and "<.Site.Nope>" in err
    assert err.endswith("; fix layers/web/templates/srv/site/layouts/index.html.j2\n")
    assert "pibake-generate-" not in err
    assert not (tmp_path / "cache/rootfs").exists() and not (site / "output").exists()


def test_secrets_stay_out_of_a_generated_site(site: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    write(site / Y, WEB_YAML + GENERATE + "secrets:\n  web_pw: password\n"
          "modes:\n  /srv/site/data/pw.txt: \"0600\"\n")
    write(site / "layers/web/templates/srv/site/data/pw.txt.j2",
          "# {{ pibake_managed }}\n{{ secret('web_pw') }}\n")
    code, out, err = run_cli(capsys, "-C", str(site), "check", "--inventory-only")
    assert (code, err) == (2, "pibake: error: node-01: layers/web/layer.yaml: generate[0] "
                              "(hugo /srv/site): /srv/site/data/pw.txt reads secret 'web_pw', "
                              "and the output is readable by every user; keep secrets out of "
                              "/srv/site\n")


def test_a_hung_generator_is_stopped_and_named(site: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(generate, "TIMEOUT", 0.001)
    with pytest.raises(BuildError) as err:
        generated(site)
    assert str(err.value) == ("node-01: layers/web/layer.yaml: generate[0] (hugo /srv/site): "
                              "hugo did not finish in 0.001 s; stopped it")


def test_setup_host_installs_every_generator() -> None:
    packages = (REPO / "scripts/setup-host.sh").read_text().split()
    assert [g.package for g in generate.GENERATORS.values() if g.package not in packages] == []


def no_hugo(monkeypatch: pytest.MonkeyPatch) -> None:
    real = preflight.found
    monkeypatch.setattr(preflight, "found", lambda tool: None if tool == "hugo" else real(tool))


def test_a_missing_hugo_is_named_once_up_front(site: Path, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("PIBAKE_CACHE", str(tmp_path / "cache"))
    no_hugo(monkeypatch)
    line = ("pibake: error: host tools not found: hugo (generate hugo); install them: "
            "apt-get install hugo\n")
    for args in (["check", "--inventory-only"], ["check"], ["build", "--all"],
                 ["render", "node-02", "--to", str(tmp_path / "review")]):
        assert run_cli(capsys, "-C", str(site), *args) == (3, "", line), args
    assert not (tmp_path / "cache/rootfs").exists() and not (tmp_path / "review").exists()


def test_hosts_without_a_generator_do_not_need_hugo(mini: Path, monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    no_hugo(monkeypatch)
    code, out, err = run_cli(capsys, "-C", str(mini), "check")
    assert (code, err) == (0, "")
    assert not any(ln.startswith("generate") for ln in out.splitlines())


def test_check_lists_hugo_among_the_host_tools(site: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(capsys, "-C", str(site), "check")
    assert (code, err) == (0, "")
    assert any(ln.split()[:4] == ["generate", "hugo", "hugo", "hugo"] for ln in out.splitlines())
