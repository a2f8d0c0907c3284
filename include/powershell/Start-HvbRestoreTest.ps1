<#
.SYNOPSIS
    Starts a restore test's recovery: one VM of one backup version, recovered as files into a new folder.
.DESCRIPTION
    Start-WBHyperVRecovery with -TargetPath and without -UseAlternateLocation copies the VM's files out
    of the backup and registers nothing with Hyper-V: the original VM is not touched, and no second VM
    with its id can appear (Start-HvbRestoreCopy imports the files as a new VM). Windows Server Backup
    runs one operation at a time: while a job runs, nothing starts and the answer names the job holding
    the host. -Async returns at once; the caller follows the recovery with Get-HvbRestoreTest.
.PARAMETER VMName
    The VM's name in the backup (the catalog's vm_name).
.PARAMETER VersionId
    The backup version (wbadmin's version identifier, MM/dd/yyyy-HH:mm); empty: the newest holding the VM.
.PARAMETER Folder
    A folder that does not exist yet, for this test alone (under the host's restore_test_path).
.OUTPUTS
    One JSON document: started; clock_utc; host_job (job_state, operation, start_time_utc) when the host
    was busy; version_id, backup_time_utc and job (job_state, operation, start_time_utc) when it started.
#>
[CmdletBinding()]
param(
    [Parameter(Mandatory)] [string] $VMName,
    [string] $VersionId = '',
    [Parameter(Mandatory)] [string] $Folder
)
$now = (Get-Date).ToUniversalTime()
$running = Get-WBJob
if ($running -and "$($running.JobState)" -eq 'Running') {
    return @{ started = $false; clock_utc = $now.ToString('o'); host_job = @{ job_state = 'Running'; operation = $running.CurrentOperation; start_time_utc = $running.StartTime.ToUniversalTime().ToString('o') } }
}
$inBackup = {
    param($set) @($set.Application | Where-Object { "$($_.Identifier)" -eq 'Hyper-V' } | ForEach-Object { $_.Component } | Where-Object { $_.Name -eq $VMName })
}
$sets = @(Get-WBBackupSet | Where-Object { (& $inBackup $_).Count -gt 0 } | Sort-Object -Property BackupTime)
$set = $(if ($VersionId) { $sets | Where-Object { $_.VersionId -eq $VersionId } | Select-Object -First 1 } else { $sets | Select-Object -Last 1 })
if (-not $set) {
    $which = $(if ($VersionId) { "version $VersionId" } else { 'any version' })
    throw [System.Management.Automation.ItemNotFoundException]::new("No backup of '$VMName' was found in $which on the backup target.")
}
if (Test-Path -LiteralPath $Folder) {
    throw [System.IO.IOException]::new("The folder '$Folder' already exists; a restore test recovers into a new folder only.")
}
Start-WBHyperVRecovery -BackupSet $set -VMInBackup (& $inBackup $set) -TargetPath $Folder -Async -Force
$job = Get-WBJob
@{ started = $true; clock_utc = $now.ToString('o'); version_id = $set.VersionId; backup_time_utc = $set.BackupTime.ToUniversalTime().ToString('o')
   job = @{ job_state = "$($job.JobState)"; operation = $job.CurrentOperation; start_time_utc = $job.StartTime.ToUniversalTime().ToString('o') } }
