"""junit.xml: one test case per backend x output, as CI systems display natively."""

from __future__ import annotations

from xml.etree import ElementTree as ET


def junit_xml(cases: list[dict]) -> bytes:
    """``cases``: {"name", "classname", "failure": str | None, "properties": {...}}."""
    failures = sum(1 for c in cases if c.get("failure"))
    suites = ET.Element("testsuites", name="qexport parity", tests=str(len(cases)), failures=str(failures))
    suite = ET.SubElement(
        suites,
        "testsuite",
        name="qexport.parity",
        tests=str(len(cases)),
        failures=str(failures),
        errors="0",
        skipped="0",
        time="0",
    )
    for case in cases:
        element = ET.SubElement(suite, "testcase", name=case["name"], classname=case["classname"], time="0")
        props = ET.SubElement(element, "properties")
        for key, value in case.get("properties", {}).items():
            ET.SubElement(props, "property", name=key, value=str(value))
        if case.get("failure"):
            ET.SubElement(element, "failure", message=case["failure"], type="ParityBelowThreshold")
    ET.indent(suites)
    return ET.tostring(suites, encoding="utf-8", xml_declaration=True)
