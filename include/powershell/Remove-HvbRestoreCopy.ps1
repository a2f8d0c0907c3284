<#
.SYNOPSIS
    Removes what restore tests left under their folder: the copies (turned off, unregistered) and their files.
.DESCRIPTION
    Runs after every restore test, whatever happened, and before the next one (a test a worker never
    finished leaves its copy). It removes only what is both named HvbRestoreTest-... and kept under Root:
    a VM of the fleet has neither, so it cannot be touched, whatever Root is set to.
.PARAMETER Root
    The host's restore_test_path (a folder of its own, e.g. D:\HvbRestoreTests).
.PARAMETER Name
    One test's copy (its name, also its folder's): only that one. Empty: every test's leftovers under Root.
.OUTPUTS
    One JSON document: clock_utc; removed_vms (names); removed_folders; removed_files (how many).
#>
[CmdletBinding(SupportsShouldProcess)]
param(
    [Parameter(Mandatory)] [string] $Root,
    [string] $Name = ''
)
$inside = $Root.TrimEnd('\') + '\'
if ($inside.Length -le 4) {
    throw [System.ArgumentException]::new("'$Root' is no folder of restore tests; nothing was removed.")
}
if ($Name -and -not $Name.StartsWith('HvbRestoreTest-')) {
    throw [System.ArgumentException]::new("'$Name' is not a restore test's name (HvbRestoreTest-...); nothing was removed.")
}
$ours = { param($itemName, $exact) $(if ($Name) { $itemName -eq $exact } else { $itemName.StartsWith('HvbRestoreTest-') }) }
$copies = @(Get-VM | Where-Object { (& $ours $_.Name $Name) -and "$($_.Path)\".StartsWith($inside, [StringComparison]::OrdinalIgnoreCase) })
$removedVms = @()
foreach ($copy in $copies) {
    if ($PSCmdlet.ShouldProcess($copy.Name, 'Turn off and remove the restore test copy')) {
        Stop-VM -VM $copy -TurnOff -Force -ErrorAction SilentlyContinue
        Remove-VM -VM $copy -Force
        $removedVms += $copy.Name
    }
}
$folderName = $Name -replace '[\\/:*?"<>|]', '_'  # as hyperv_backup.restore.folder names it
$folders = @(Get-ChildItem -LiteralPath $Root -Directory -ErrorAction SilentlyContinue | Where-Object { & $ours $_.Name $folderName })
$files = 0
foreach ($folder in $folders) {
    if ($PSCmdlet.ShouldProcess($folder.FullName, 'Remove the restore test folder')) {
        $files += @(Get-ChildItem -LiteralPath $folder.FullName -Recurse -File).Count
        Remove-Item -LiteralPath $folder.FullName -Recurse -Force
    }
}
@{ clock_utc = (Get-Date).ToUniversalTime().ToString('o'); removed_vms = $removedVms; removed_folders = @($folders | ForEach-Object { $_.FullName }); removed_files = $files }
